"""moto's DynamoDB with its condition-expression lexer memoised (local_aws.moto_dynamodb): same tokens,
same verdicts."""

from __future__ import annotations

import boto3
import pytest
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
    moto_dynamodb.make_lexing_memoised()
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
