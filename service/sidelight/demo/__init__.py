"""Demo models, trained from data that scikit-learn ships: nothing is downloaded."""
