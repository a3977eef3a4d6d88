"""moto's server with IAM policies enforced, and an admin key to start from.

    moto_enforced.py HOST PORT        (PORT 0: the kernel picks one)

Prints one line to stdout, then serves until killed:

    {"url": "http://HOST:PORT", "admin": {"access_key_id": K, "secret_access_key": S}}

The admin is IAM user "admin" with an inline "Action": "*" policy. Every request after the
bootstrap must be signed with a key moto issued and is checked against its owner's IAM policies
(moto 5.2.5: actions, and resources only for IAM, STS, S3 and SQS; SSM and EC2 calls are
checked against the resource "*", so an Allow scoped to a parameter ARN denies). A denied call
is answered in the called service's own protocol, as AWS answers it (see _denial_body).
Everything else this process writes (werkzeug's request log, moto's chatter) goes to stderr.
"""

import json
import os
import sys
import threading
from xml.sax.saxutils import escape
from urllib.parse import quote, urlencode

# The bootstrap below makes exactly this many requests, all of them unauthenticated: moto lets
# the first N actions through unchecked and checks every later one. Set before moto is imported,
# as moto.settings reads it at import time.
BOOTSTRAP_REQUESTS = 3  # iam:CreateUser, iam:PutUserPolicy, iam:CreateAccessKey
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_REQUESTS)

import boto3  # noqa: E402
import botocore.session  # noqa: E402
from moto import settings  # noqa: E402
from moto.core.authorization import ActionAuthenticatorMixin  # noqa: E402
from moto.core.exceptions import AccessDeniedError  # noqa: E402
from moto.core.responses import BaseResponse  # noqa: E402
from moto.iam.access_control import IAMRequestBase  # noqa: E402
from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402
from moto.moto_server.werkzeug_app import MotoRequestHandler  # noqa: E402
from werkzeug.exceptions import HTTPException  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moto_fixes  # noqa: E402

moto_fixes.apply()

ADMIN_POLICY = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _quote_all(text, safe="", encoding=None, errors=None):
    """urlencode's quote_via that escapes a space as %20 (and '/' too), like the Rust SDK."""
    return quote(text, safe="", encoding=encoding, errors=errors)


_moto_check_signature = IAMRequestBase.check_signature


def _check_signature(self):
    """moto's signature check, plus one second chance for form-encoded requests.

    werkzeug consumes a form body, so moto sees an empty raw body and rebuilds it from the
    parsed parameters with urlencode (space as '+') before checking the SigV4 signature. The
    Rust AWS SDK signed the body with '%20', so its requests with a space in a parameter fail.
    On a mismatch, check again over the body rebuilt with '%20' quoting.
    """
    try:
        _moto_check_signature(self)
    except HTTPException:
        if self._body or not isinstance(self._data, dict) or not self._data:
            raise  # a real body was signed and checked as sent: nothing to rebuild
        self._body = urlencode(self._data, doseq=True, quote_via=_quote_all).encode()
        try:
            _moto_check_signature(self)  # raises moto's own error if this fails too
        finally:
            self._body = b""


class _Denied(HTTPException):
    """A denial in the wire format of the service that was called (see _authorize)."""
    code = 403

    def __init__(self, body):
        super().__init__(description=body)


def _denial_body(service, message):
    """AWS's AccessDenied answer for `service`, shaped by its protocol as AWS shapes it.

    moto answers every denied call with one XML shape (ErrorResponse/Errors/Error), which only
    boto3 reads leniently: the Rust SDK finds no error code in it for IAM (query protocol:
    ErrorResponse/Error), EC2 (ec2 protocol: Response/Errors/Error, code
    UnauthorizedOperation) or SSM (JSON: __type AccessDeniedException)."""

    protocol = _PROTOCOLS.get(service)
    if protocol is None:
        protocol = _botocore.get_service_model(service).metadata["protocol"]
        _PROTOCOLS[service] = protocol
    if protocol == "ec2":
        return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>"
                "<Code>UnauthorizedOperation</Code>"
                f"<Message>You are not authorized to perform this operation. {escape(message)}"
                "</Message></Error></Errors><RequestID>denied</RequestID></Response>")
    if protocol in ("json", "rest-json"):
        return json.dumps({"__type": "AccessDeniedException", "message": message})
    return ("<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
            f"<Message>{escape(message)}</Message></Error><RequestId>denied</RequestId>"
            "</ErrorResponse>")


_PROTOCOLS = {}
_botocore = None
_moto_authorize = BaseResponse._authenticate_and_authorize_normal_action


def _authorize(self, resource="*"):
    try:
        _moto_authorize(self, resource)
    except AccessDeniedError as denied:
        raise _Denied(_denial_body(self.service_name, denied.message)) from denied


def bootstrap_admin(url):
    """Create the admin user, its policy and key, in BOOTSTRAP_REQUESTS unauthenticated calls."""
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="admin",
                        PolicyDocument=json.dumps(ADMIN_POLICY))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    # Someone else taking a free request would have made one of the calls above fail; this
    # catches a miscount the other way (a free request left over for anyone).
    assert ActionAuthenticatorMixin.request_count == BOOTSTRAP_REQUESTS, \
        ActionAuthenticatorMixin.request_count
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    host, port = sys.argv[1], int(sys.argv[2])

    # stdout carries the one JSON line; anything else printed goes to stderr.
    stdout, sys.stdout = sys.stdout, sys.stderr

    settings.INITIAL_NO_AUTH_ACTION_COUNT = BOOTSTRAP_REQUESTS  # in case moto came in earlier
    IAMRequestBase.check_signature = _check_signature
    global _botocore
    _botocore = botocore.session.get_session()
    BaseResponse._authenticate_and_authorize_normal_action = _authorize

    # What `moto_server -H HOST -p PORT` runs, but through make_server to learn the real port.
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    port = server.server_address[1]
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto_server does (used to build URLs)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    url = f"http://{host}:{port}"
    admin = bootstrap_admin(url)
    stdout.write(json.dumps({"url": url, "admin": admin}) + "\n")
    stdout.flush()

    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
