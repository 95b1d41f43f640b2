"""Credentials out of anything logged: MLflow params and artifacts, checkpoint meta, error messages.

A URI may carry a secret in its user-info (`https://user:password@mlflow.example.com`) or in its
query (`s3://bucket/path?access_key=...&secret_key=...`, which pyarrow accepts for Ray storage).
`redact_uri` keeps everything a reader needs to recognise the location and masks the secret.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://[user[:password]@]host...: the password (or a bare token as user) is masked
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)(?P<user>[^/@?#:\s]*)(?P<pw>:[^/@?#\s]*)?@"
)
# ?key=value / &key=value where the key names a secret
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;][^=&#\s]*(?:secret|passw|token|key|sig|credential|auth)[^=&#\s]*=)[^&#\s]*",
    re.IGNORECASE,
)


def redact_uri(text: str) -> str:
    """`text` with the credentials of every URI in it masked (other text unchanged)."""
    if "://" not in text and "=" not in text:
        return text

    def userinfo(m: re.Match) -> str:
        if m["pw"]:
            return f"{m['scheme']}{m['user']}:{MASK}@"
        return f"{m['scheme']}{MASK}@"

    return _SECRET_PARAM.sub(rf"\g<key>{MASK}", _USERINFO.sub(userinfo, text))


def redact(value: Any) -> Any:
    """`redact_uri` applied to every string of a (nested) dict/list value."""
    if isinstance(value, str):
        return redact_uri(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def param_values(values: dict[str, Any], limit: int = 500) -> dict[str, str]:
    """MLflow param values: each value as text, credentials masked, at most `limit` characters
    (what a Train run and a Tune trial's child run log)."""
    return {k: redact(str(v))[:limit] for k, v in values.items()}
