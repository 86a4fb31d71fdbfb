"""moto 5.2's DynamoDB condition expressions, lexed once per expression text.

Measured on the stack (py-spy, `bench/e2e.py`): a conditional PutItem, the
predictions' idempotent write, made moto parse its ConditionExpression twice (once to
check the names it uses, once to evaluate it), and tokenising the text was most of
each parse: 6% of the moto process's time. The lexer compiles six regular
expressions per token of a text that is the same for every image.

The tokens depend only on the text, so `make_lexing_memoised()` keeps them per text
(for a bounded number of texts) and hands each parse a fresh sequence of the same
immutable tokens; names and values are substituted later, per request, as before.
A moto that changed shape fails loudly here.
"""

from __future__ import annotations

import functools
from collections import deque
from typing import Any

from moto.dynamodb.comparisons import ConditionExpressionParser

_LEXER = "_lex_condition_expression"
# moto's own lexer, kept for the memoised one (and for the tests comparing the two).
moto_lexer = vars(ConditionExpressionParser).get(_LEXER)
_applied = False


def make_lexing_memoised() -> None:
    """Patch moto's condition-expression lexer in this process (idempotent)."""
    global _applied
    if _applied:
        return
    lex = moto_lexer
    if lex is None or not isinstance(getattr(ConditionExpressionParser, "Node", None), type):
        raise RuntimeError("moto's condition-expression parser changed shape; review local_aws/moto_dynamodb.py")

    @functools.lru_cache(maxsize=1024)
    def tokens(text: str) -> tuple[Any, ...]:
        parser = ConditionExpressionParser.__new__(ConditionExpressionParser)
        parser.condition_expression = text  # the only state the lexer reads
        return tuple(lex(parser))

    def lex_memoised(self: ConditionExpressionParser) -> deque:
        return deque(tokens(self.condition_expression))

    setattr(ConditionExpressionParser, _LEXER, lex_memoised)
    _applied = True
