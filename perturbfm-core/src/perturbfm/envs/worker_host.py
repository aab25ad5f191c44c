"""The env-side half of the file protocol (protocol 1), run by a model environment's Python.

STAND-ALONE: this file is executed by path (``python -I worker_host.py CALL_DIR``) in
the model's own environment, where ``perturbfm`` is not installed. It may import only
the standard library and numpy. It reads ``CALL_DIR/request.json`` (and the ``.npy``
arrays it names), loads the worker file named there, calls its ``fit`` or
``predict``, and writes ``CALL_DIR/response.json`` (+ ``.npy`` arrays), or
``CALL_DIR/error.json`` and exits with status 3 when the worker raised or returned
something that cannot be written. The harness validates the response
(:mod:`perturbfm.envs.protocol`); this side only converts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import traceback
from typing import Any, NoReturn

PROTOCOL = 1
EXIT_WORKER_ERROR = 3


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, allow_nan=False)
    os.replace(tmp, path)


def _fail(call_dir: str, kind: str, message: str, tb: str = "") -> NoReturn:
    _write_json(os.path.join(call_dir, "error.json"),
                {"protocol": PROTOCOL, "kind": kind, "message": message, "traceback": tb})
    sys.stderr.write(message + "\n" + tb)
    sys.exit(EXIT_WORKER_ERROR)


def _plain(value: Any, where: str) -> Any:
    """JSON values only (numpy scalars converted); NaN/inf refused."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value} (not finite)")
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, not a JSON value")


def _load_worker(path: str) -> Any:
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("pfm_env_worker", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the worker file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(call_dir: str) -> None:
    import numpy as np

    with open(os.path.join(call_dir, "request.json"), encoding="utf-8") as fh:
        request = json.load(fh)
    if request.get("protocol") != PROTOCOL:
        _fail(call_dir, "bad_request", f"request protocol {request.get('protocol')!r}; this host speaks {PROTOCOL}")
    call = request.get("call")
    try:
        worker = _load_worker(request["worker"])
        fn = getattr(worker, call, None)
        if not callable(fn):
            _fail(call_dir, "worker_exception", f"the worker file {request['worker']} defines no function {call}()")
        if call == "fit":
            train = dict(request["train"])
            for key, name in train.pop("arrays").items():
                train[key] = np.load(os.path.join(call_dir, name), allow_pickle=False)
            out = fn(train, request["config"], request["state_dir"])
        elif call == "predict":
            out = fn(request["queries"], request["state_dir"])
        else:
            _fail(call_dir, "bad_request", f"unknown call {call!r}")
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported to the harness with the traceback
        _fail(call_dir, "worker_exception", f"{call}() raised {type(exc).__name__}: {exc}", traceback.format_exc())
    try:
        if not isinstance(out, dict):
            raise TypeError(f"{call}() returned a {type(out).__name__}, expected a dict")
        response: dict[str, Any] = {"protocol": PROTOCOL, "call": call, "arrays": {}}
        for key, value in out.items():
            if key in ("mean_delta", "var_delta") and call == "predict":
                if value is None:
                    continue
                arr = np.asarray(value)
                if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
                    raise TypeError(f"{key} is not a numeric array (dtype {arr.dtype})")
                name = f"{key}.npy"
                np.save(os.path.join(call_dir, name), np.asarray(arr, dtype=np.float64), allow_pickle=False)
                response["arrays"][key] = name
            else:
                response[key] = _plain(value, key)
    except (TypeError, ValueError) as exc:
        _fail(call_dir, "unserialisable_output", f"{call}() output cannot be sent back: {exc}",
              traceback.format_exc())
    _write_json(os.path.join(call_dir, "response.json"), response)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -I worker_host.py CALL_DIR\n")
        sys.exit(2)
    main(sys.argv[1])
