"""What moto 5.2.5 lacks to serve the stack's TLS-only bucket, applied by both of the tests'
moto servers (moto_server.py, moto_enforced.py).

moto evaluates a bucket policy on every object request, but:
- it knows no `Bool` condition operator and ignores a condition it does not know, so the
  policy's "Deny unless aws:SecureTransport" became an unconditional Deny of every object call;
- it passes no request context (aws:SecureTransport) to the evaluation;
- a statement whose condition does not hold counts as a Deny, even an Allow; in AWS such a
  statement does not apply.

- its ARN matcher turns a policy's `*` into a regex and leaves `?` (IAM: any one character) to
  the regex engine, so `gatehouse-lab-????????????` is a broken pattern to it.

- it checks some S3 calls against the wrong IAM action: HeadBucket as s3:HeadBucket (AWS:
  s3:ListBucket); its map looks for `public_access_block` where the request says
  `publicAccessBlock`, and has no `encryption`, so Get/PutPublicAccessBlock and
  Get/PutBucketEncryption were checked as s3:ListBucket / s3:CreateBucket.

- CreateLaunchTemplateVersion stores the version's user data as the plain string it was sent,
  where CreateLaunchTemplate stores moto's base64 type, so an Auto Scaling group launching from
  a second version failed on moto's own type assertion (HTTP 500).

- CloudWatch Logs rejects a PutLogEvents batch whose events span more than 24 hours, whole
  (InvalidParameterException); moto takes it.

- IAM user names are case-insensitive in AWS (GetUser for `ALICE` answers user `alice`, with
  her own spelling); moto looks them up case-sensitively.

- it names the IAM action of a call after the service of the request's signing scope, which
  for CloudWatch is `monitoring`; AWS checks CloudWatch's calls as `cloudwatch:<Action>`.

moto serves plain http where AWS serves https, so a request counts as arriving over TLS unless
it says otherwise with `X-Forwarded-Proto: http` (what a test sends to show the Deny).
"""

import re
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


def _match(pattern, string):
    """IAM's wildcard match: `*` any run of characters, `?` any one, the rest literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.match(f"^{regex}$", string, re.DOTALL)


def _s3_actions():
    """The IAM actions AWS checks for these S3 calls (the S3 API reference's permissions)."""
    from moto.s3 import responses
    bucket = responses.ACTION_MAP["BUCKET"]
    bucket["HEAD"]["DEFAULT"] = "ListBucket"
    for method, get_or_put in [("GET", "Get"), ("PUT", "Put"), ("DELETE", "Put")]:
        bucket[method]["publicAccessBlock"] = f"{get_or_put}BucketPublicAccessBlock"
        bucket[method]["encryption"] = f"{get_or_put}EncryptionConfiguration"


def _launch_template_versions():
    """A new version's user data as CreateLaunchTemplate keeps it (moto's base64 type)."""
    from moto.ec2.models.launch_templates import LaunchTemplate
    from moto.ec2.utils import parse_user_data

    create_version = LaunchTemplate.create_version

    def _create_version(self, data, description):
        if isinstance(data, dict) and isinstance(data.get("UserData"), str):
            data = dict(data, UserData=parse_user_data(data["UserData"]))
        return create_version(self, data, description)

    LaunchTemplate.create_version = _create_version


def _iam_user_names():
    """GetUser (and every call that looks a user up by name) finds a user in any case of the
    name, as IAM does; the answer keeps the user's own spelling."""
    from moto.iam.models import IAMBackend

    get_user = IAMBackend.get_user

    def _get_user(self, name):
        if name not in self.users:
            for known in self.users:
                if known.lower() == str(name).lower():
                    name = known
                    break
        return get_user(self, name)

    IAMBackend.get_user = _get_user


def _log_batch_span():
    """PutLogEvents refuses a batch spanning more than 24 hours, as CloudWatch Logs does."""
    from moto.logs.exceptions import InvalidParameterException
    from moto.logs.models import LogsBackend

    put_log_events = LogsBackend.put_log_events

    def _put_log_events(self, log_group_name, log_stream_name, log_events):
        times = [e["timestamp"] for e in log_events]
        if times and max(times) - min(times) > 24 * 3600 * 1000:
            raise InvalidParameterException(
                "The batch of log events in a single PutLogEvents request cannot span more "
                "than 24 hours.")
        return put_log_events(self, log_group_name, log_stream_name, log_events)

    LogsBackend.put_log_events = _put_log_events


def _cloudwatch_actions():
    """CloudWatch's calls checked as `cloudwatch:<Action>` (signed for `monitoring`)."""
    from moto.iam.access_control import IAMRequestBase

    init = IAMRequestBase.__init__

    def _init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self._action.startswith("monitoring:"):
            self._action = "cloudwatch:" + self._action[len("monitoring:"):]

    IAMRequestBase.__init__ = _init


def apply():
    _s3_actions()
    _cloudwatch_actions()
    _log_batch_span()
    _iam_user_names()
    _launch_template_versions()
    policy_conditions.CONDITION_OPERATIONS.setdefault("Bool", _bool)
    DomainDispatcherApplication.__call__ = _call
    IAMPolicyStatement.is_action_permitted = _permitted
    IAMPolicyStatement._match = staticmethod(_match)
