"""Field names: the data plane names a request's fields as sidelight.v1 does ("inputs.shape",
"params.n_steps"); the Open Inference Protocol's messages name them otherwise
("inputs[0].shape", "parameters.explain_params.n_steps"). Errors are renamed at the boundary,
so that a message always names the field the client sent."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sidelight.errors import FieldError
from sidelight.transport.oip_parameters import METHOD_PARAM, PARAMS_PARAM, SUBJECT_PARAM


@dataclass(frozen=True)
class InferFields:
    """Where the data plane's request fields came from in a ModelInfer request."""

    input_index: int
    raw: bool  # the inputs came in raw_input_contents
    targets: str  # "parameters.explain_targets", or "inputs[1]" for a targets tensor

    def rename(self, field: str) -> str:
        """The protocol's path of a data-plane field, e.g. "inputs.shape" -> "inputs[0].shape"."""
        head, tail = _split(field)
        if head == "inputs":
            where = f"inputs[{self.input_index}]"
            if tail == ".dtype":
                return f"{where}.datatype"
            if tail == ".data" and self.raw:
                return f"raw_input_contents[{self.input_index}]"
            if tail == ".data":
                return f"{where}.contents"
            return where + tail
        if head == "targets":
            return self.targets + tail
        return _RENAMED.get(head, head) + tail


_RENAMED = {
    "model": "model_name",
    "method": f"parameters.{METHOD_PARAM}",
    "params": f"parameters.{PARAMS_PARAM}",
    "request_id": "id",
    "subject_id": f"parameters.{SUBJECT_PARAM}",
}
# ModelReady's and ModelMetadata's request fields.
_LOOKUP_RENAMED = {"model": "name", "model_version": "version"}


def lookup_field(field: str) -> str:
    head, tail = _split(field)
    return _LOOKUP_RENAMED.get(head, head) + tail


def _split(field: str) -> tuple[str, str]:
    """("params", ".n_steps") of "params.n_steps"; ("targets", "[2]") of "targets[2]"."""
    match = re.match(r"[A-Za-z_]+", field)
    end = match.end() if match else 0
    return field[:end], field[end:]


@contextmanager
def renaming(rename: Callable[[str], str]) -> Iterator[None]:
    """Errors raised inside name their field as this protocol does."""
    try:
        yield
    except FieldError as exc:
        field = rename(exc.field)
        if field == exc.field:
            raise
        raise exc.renamed(field) from exc
