"""Membership attacks on an FR backbone without a classifier: scikit-learn style estimators, higher score = member.

``create_attack(name, **params)`` builds a registered attack; ``ATTACKS.names()`` lists them.
"""

from typing import Any

from frleak.attacks.base import AttackInputs, MembershipAttack, load_attack
from frleak.registry import ATTACKS


def create_attack(name: str, **params: Any) -> MembershipAttack:
    attack: MembershipAttack = ATTACKS.create(name, **params)
    return attack


__all__ = ["ATTACKS", "AttackInputs", "MembershipAttack", "create_attack", "load_attack"]
