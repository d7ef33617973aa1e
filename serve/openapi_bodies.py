"""The request bodies of the HTTP endpoints, as OpenAPI ``requestBody`` objects.

The endpoints read their bodies themselves (streamed, bounded, then parsed by serve/schemas.py,
serve/oip.py and serve/inference_log/), so FastAPI cannot infer them from the signatures;
these describe the same layouts for ``GET /openapi.json`` (token holders only), so that
clients and schema-driven fuzzers know what to send. Pure data.
"""

from __future__ import annotations

from typing import Any

_SCALAR = {"description": "a number, a string (a category), a boolean or null (missing)",
           "nullable": True, "oneOf": [{"type": "number"}, {"type": "string", "maxLength": 1024},
                                       {"type": "boolean"}]}
_RECORDS = {"type": "array", "items": {"type": "object", "additionalProperties": _SCALAR}}
_VERSION = {"type": "string", "pattern": "^[1-9][0-9]{0,17}$", "example": "4"}


def _json(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


INVOCATIONS = _json({
    "description": "MLflow's scoring formats: exactly one of these keys",
    "oneOf": [
        {"type": "object", "required": ["dataframe_split"], "additionalProperties": False,
         "properties": {"dataframe_split": {
             "type": "object", "required": ["columns", "data"],
             "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                            "data": {"type": "array",
                                     "items": {"type": "array", "items": _SCALAR}}}},
             "params": {"type": "object"}}},
        {"type": "object", "required": ["dataframe_records"], "additionalProperties": False,
         "properties": {"dataframe_records": _RECORDS, "params": {"type": "object"}}},
        {"type": "object", "required": ["instances"], "additionalProperties": False,
         "properties": {"instances": _RECORDS, "params": {"type": "object"}}},
        {"type": "object", "required": ["inputs"], "additionalProperties": False,
         "properties": {"inputs": {"oneOf": [
             _RECORDS, {"type": "object",
                        "additionalProperties": {"type": "array", "items": _SCALAR}}]},
             "params": {"type": "object"}}},
    ],
    "example": {"dataframe_records": [{"x1": 0.3, "cat": "b"}]},
})

_TENSOR = {
    "type": "object", "required": ["name", "shape", "datatype", "data"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": {"type": "array", "minItems": 1, "maxItems": 2,
                  "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": [
            "BOOL", "BYTES", "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
            "UINT8", "UINT16", "UINT32", "UINT64"]},
        "data": {"type": "array", "items": {"oneOf": [_SCALAR,
                                                      {"type": "array", "items": _SCALAR}]}},
        "parameters": {"type": "object"},
    },
}
INFER = _json({
    "description": "Open Inference Protocol (v2): one input per feature, or one 2-D input",
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "maxLength": 256},
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "enum": ["predict"]},
                           "parameters": {"type": "object"}}}},
        "parameters": {"type": "object"},
    },
})

FEEDBACK = _json({
    "type": "object", "required": ["labels"], "additionalProperties": False,
    "properties": {"labels": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["request_id", "label"], "additionalProperties": False,
        "properties": {
            "request_id": {"type": "string", "pattern": "^[ -~]{1,256}$",
                           "description": "the x-request-id of the answered prediction"},
            "row": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
            "label": {"type": "number", "description": "a finite number; 1/0 for classes"},
        }}}},
})

RETRAIN = _json({
    "type": "object", "additionalProperties": False,
    "properties": {"reason": {"type": "string", "maxLength": 1000}},
}, required=False)

TRAFFIC = _json({
    "type": "object", "required": ["weights"], "additionalProperties": False,
    "properties": {
        "weights": {"type": "object", "description": "version -> fraction; they sum to 1",
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
        "shadow": {**_VERSION, "nullable": True},
        "sticky_key": {"type": "string", "nullable": True,
                       "pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"},
    },
    "example": {"weights": {"3": 0.95, "4": 0.05}, "shadow": None, "sticky_key": None},
})

PROMOTE = _json({
    "type": "object", "required": ["version"], "additionalProperties": False,
    "properties": {"version": _VERSION},
})

#: endpoint name -> its OpenAPI requestBody
BODIES: dict[str, dict[str, Any]] = {
    "invocations": INVOCATIONS, "infer": INFER, "feedback": FEEDBACK, "retrain": RETRAIN,
    "traffic": TRAFFIC, "promote": PROMOTE,
}
