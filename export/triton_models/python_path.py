# ruclip-tiny triton-repo: the directories of this model's "python_path" parameter (a JSON list in config.pbtxt) go
# first on sys.path before anything else is imported: the python stub ignores PYTHONPATH, and
# triton_python_backend_utils itself imports numpy, so initialize() would be too late to read them.
import json as _json
import os as _os
import re as _re
import sys as _sys


def _python_path():
    config = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "config.pbtxt")
    with open(config, encoding="utf-8") as file:
        text = file.read()
    match = _re.search(r'key:\s*"python_path"\s*value\s*\{\s*string_value:\s*("(?:[^"\\]|\\.)*")', text)
    return _json.loads(_json.loads(match.group(1))) if match else []


for _directory in reversed(_python_path()):
    if _directory in _sys.path:
        _sys.path.remove(_directory)
    _sys.path.insert(0, _directory)
