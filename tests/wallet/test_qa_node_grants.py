"""Review finding seen from the wallet's side: a real node must refuse a malformed (but
validly signed) grant with a clear gRPC status, not an internal error.

The kernel's ``check_purpose`` raises ``TypeError`` on a non-string purpose (see
tests/consent/test_qa_grants.py); ``agent_node.grantstore`` catches only ``ConsentError``, so
the node answers UNKNOWN "Exception calling application: ..." instead of saying what is wrong.
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import grpc
import pytest

from agent_node.client import NodeClient, NodeError
from consent.grants import issue_grant
from consent.identity import Identity
from consent.integrity import sign_document
from tests.wallet.conftest import NodeProcess


def test_node_refuses_a_non_string_purpose_clearly(node: NodeProcess) -> None:
    customer = Identity.generate()
    node.bind(customer.did)
    credential = issue_grant(
        customer, requester=Identity.generate().did, nodes=[node.did],
        purpose="quote-generation", scopes=["transaction"], ttl=timedelta(hours=1),
    )
    body = copy.deepcopy({k: v for k, v in credential.items() if k != "proof"})
    body["credentialSubject"]["purpose"] = 7
    malformed = sign_document(body, customer)
    with NodeClient(node.address, node.ca_pem, customer) as client:
        with pytest.raises(NodeError) as caught:
            client.submit_grant(malformed)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value.code
        assert "purpose" in str(caught.value)
        assert "Exception calling application" not in str(caught.value)
        # Nothing was stored: the node holds no grant of this customer.
        assert client.grant_status([]) == [], json.dumps(str(client.grant_status([])))
