"""Task plumbing: which failures are retried, and artifact keys Prefect accepts."""

from __future__ import annotations

from botocore.exceptions import ClientError, EndpointConnectionError
from prefect.states import Failed

from cxr_model.sources import SourceError
from tasks.common import artifact_key, transient_failure


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_only_storage_and_network_trouble_is_retried():
    def retried(error: BaseException) -> bool:
        return transient_failure(None, None, Failed(data=error))

    assert retried(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert retried(client_error("InternalError", 500))
    assert retried(client_error("SlowDown", 503))
    assert not retried(client_error("AccessDenied", 403))
    assert not retried(SourceError("source folder /x does not exist"))
    assert not retried(ValueError("bad input"))


def test_artifact_keys_are_lowercase_dashes():
    assert artifact_key("Data Quality", "run_7") == "data-quality-run-7"
