"""What moto 5.2.5 lacks to serve the stack's TLS-only bucket, applied by both of the tests'
moto servers (moto_server.py, moto_enforced.py).

moto evaluates a bucket policy on every object request, but:
- it knows no `Bool` condition operator and ignores a condition it does not know, so the
  policy's "Deny unless aws:SecureTransport" became an unconditional Deny of every object call;
- it passes no request context (aws:SecureTransport) to the evaluation;
- a statement whose condition does not hold counts as a Deny, even an Allow; in AWS such a
  statement does not apply.

moto serves plain http where AWS serves https, so a request counts as arriving over TLS unless
it says otherwise with `X-Forwarded-Proto: http` (what a test sends to show the Deny).
"""

import threading

from moto.iam import policy_conditions
from moto.iam.access_control import IAMPolicyStatement, PermissionResult
from moto.server import DomainDispatcherApplication

_request = threading.local()


def _bool(expected, actual):
    values = expected if isinstance(expected, list) else [expected]
    return str(actual).lower() in [str(v).lower() for v in values]


_moto_call = DomainDispatcherApplication.__call__


def _call(self, environ, start_response):
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "https").lower()
    _request.secure = "false" if proto == "http" else "true"
    return _moto_call(self, environ, start_response)


_moto_permitted = IAMPolicyStatement.is_action_permitted


def _permitted(self, action, resource="*", principal=None, incoming_condition_values=None):
    values = {"aws:SecureTransport": getattr(_request, "secure", "true")}
    values.update(incoming_condition_values or {})
    if self._statement.get("Condition") and not self._check_conditions(values):
        return PermissionResult.NEUTRAL
    return _moto_permitted(self, action, resource, principal, values)


def apply():
    policy_conditions.CONDITION_OPERATIONS.setdefault("Bool", _bool)
    DomainDispatcherApplication.__call__ = _call
    IAMPolicyStatement.is_action_permitted = _permitted
