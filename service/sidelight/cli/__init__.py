"""The `sidelight` command: one module per command group (`main` builds the parser from them).

sidelight serve --model-repository var/model-repository [--port 50051] [--metrics-port 9095]
sidelight serve ... --redis-url redis://127.0.0.1:6379/0    # jobs on Redis, run by:
sidelight worker --model-repository var/model-repository --redis-url redis://... [-n 2]
sidelight serve --config /etc/sidelight/config.yaml        # or SIDELIGHT_* variables
sidelight models build-demo --out var/model-repository --samples var/samples
sidelight models list --server 127.0.0.1:50051
sidelight predict --model digits --input var/samples/digit_3.png
sidelight explain --model digits --method grad_cam --input var/samples/digit_3.png --out e.png
sidelight explain --model breast_cancer --method kernel_shap --input ... --out s.png  (a job)
sidelight jobs get|watch|cancel JOB_ID
"""

from sidelight.cli.main import main

__all__ = ["main"]
