"""moto's DynamoDB with its condition-expression lexer memoised and its transactions saving items,
not tables (local_aws.moto_dynamodb, applied for the session): same tokens, same verdicts, same rollbacks."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.comparisons import ConditionExpressionParser

from local_aws import moto_dynamodb

EXPRESSIONS = [
    "attribute_not_exists(image_key) OR etag <> :etag OR NOT (#status IN (:ok, :failed))",
    "Id > :five AND attribute_exists(test) AND Id BETWEEN :a AND :b OR size(#l) < :six",
    "begins_with(#n, :prefix) AND contains(tags, :t) AND a.b[1].c = :v",
    "  spaced   =   :x  ",
]


def tokens(expression: str) -> list:
    return list(ConditionExpressionParser(expression, {}, {})._lex_condition_expression())


def test_the_tokens_are_moto_s_and_each_parse_gets_its_own_sequence():
    plain = {text: list(moto_dynamodb.moto_lexer(ConditionExpressionParser(text, {}, {}))) for text in EXPRESSIONS}
    for text in EXPRESSIONS * 2:
        assert tokens(text) == plain[text]
    first = ConditionExpressionParser(EXPRESSIONS[0], {}, {})._lex_condition_expression()
    first.clear()  # the parse consumes its sequence: the next one is whole
    assert tokens(EXPRESSIONS[0]) == plain[EXPRESSIONS[0]]
    with pytest.raises(ValueError, match="Cannot parse condition"):
        tokens("a = :b ; drop")


def test_conditional_writes_decide_as_before(moto_url):
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(TableName="p", KeySchema=[{"AttributeName": "image_key", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "image_key", "AttributeType": "S"}],
                          BillingMode="PAY_PER_REQUEST")

    def save(etag: str, status: str) -> bool:
        try:
            dynamodb.put_item(
                TableName="p", Item={"image_key": {"S": "k"}, "etag": {"S": etag}, "status": {"S": status}},
                ConditionExpression=EXPRESSIONS[0], ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":etag": {"S": etag}, ":ok": {"S": "OK"}, ":failed": {"S": "FAILED"}})
            return True
        except dynamodb.exceptions.ConditionalCheckFailedException:
            return False

    assert [save("e1", "PENDING"), save("e1", "OK"), save("e1", "OK"), save("e1", "FAILED"), save("e2", "OK")] == \
        [True, True, False, False, True]


@pytest.fixture
def transactions():
    """moto in this process, its transactions saving items rather than tables; a table with both keys."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                       {"AttributeName": "sk", "KeyType": "RANGE"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                  {"AttributeName": "sk", "AttributeType": "S"}])
        client.put_item(TableName="t", Item={"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "1"}})
        client.put_item(TableName="t", Item={"pk": {"S": "c"}, "sk": {"S": "1"}, "v": {"N": "1"}})
        yield client


def everything(client) -> list[dict]:
    return sorted(client.scan(TableName="t", ConsistentRead=True)["Items"], key=lambda item: item["pk"]["S"])


def key(pk: str) -> dict:
    return {"pk": {"S": pk}, "sk": {"S": "1"}}


BUMP_A = {"Update": {"TableName": "t", "Key": key("a"), "UpdateExpression": "SET v = :two",
                     "ExpressionAttributeValues": {":two": {"N": "2"}}}}
PUT_B = {"Put": {"TableName": "t", "Item": {**key("b"), "v": {"N": "1"}}}}
DELETE_C = {"Delete": {"TableName": "t", "Key": key("c")}}


def test_a_transaction_writes_every_item(transactions):
    transactions.transact_write_items(TransactItems=[BUMP_A, PUT_B, DELETE_C])
    assert [(i["pk"]["S"], i["v"]["N"]) for i in everything(transactions)] == [("a", "2"), ("b", "1")]


@pytest.mark.parametrize("spoiler", [
    # a condition that fails after the other writes were applied: TransactionCanceledException
    {"ConditionCheck": {"TableName": "t", "Key": key("c"), "ConditionExpression": "attribute_not_exists(pk)"}},
    # two operations on one item: ValidationException
    {"Update": {"TableName": "t", "Key": key("a"), "UpdateExpression": "SET w = :w",
                "ExpressionAttributeValues": {":w": {"N": "9"}}}},
])
def test_a_failed_transaction_leaves_every_item_as_it_was(transactions, spoiler):
    from moto.dynamodb.models import dynamodb_backends

    before = everything(transactions)
    table = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables["t"]
    with pytest.raises(ClientError) as failure:
        transactions.transact_write_items(TransactItems=[BUMP_A, PUT_B, DELETE_C, spoiler])
    assert failure.value.response["Error"]["Code"] in ("TransactionCanceledException", "ValidationException")
    assert everything(transactions) == before
    assert dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables["t"] is table  # the table was never copied
    transactions.transact_write_items(TransactItems=[BUMP_A, PUT_B])  # and it takes writes as before
    assert [(i["pk"]["S"], i["v"]["N"]) for i in everything(transactions)] == [("a", "2"), ("b", "1"), ("c", "1")]
