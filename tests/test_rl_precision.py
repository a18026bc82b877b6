"""One dtype table and one master-weight rule, whoever reads them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from policies.dtypes import DTYPE_NAMES, resolve_dtype
from rewards import RewardConfigError
from rewards import resolve_dtype as reward_dtype
from rl.precision import check_master_weights, check_trainable_dtypes

ARGS = SimpleNamespace(deepspeed=None, allow_low_precision_weights=False)


def test_policies_and_rewards_read_the_same_dtype_names():
    for name, dtype in DTYPE_NAMES.items():
        assert resolve_dtype(name, "cpu") == reward_dtype(name) == reward_dtype(f"torch.{name.upper()}") == dtype
    assert reward_dtype(None) == torch.float32
    with pytest.raises(RewardConfigError, match="unknown dtype 'float8'; use one of"):
        reward_dtype("float8")


def test_the_recipe_check_and_the_loaded_model_check_give_one_message():
    with pytest.raises(ValueError) as before:
        check_master_weights(ARGS, "bf16", use_peft=False)
    with pytest.raises(ValueError) as after:
        check_trainable_dtypes(nn.Linear(2, 2).to(torch.bfloat16), ARGS)
    assert str(before.value).startswith("dtype: bf16 would train the policy's weights in bf16 with no fp32 master copy")
    assert str(after.value).startswith("trainable weights are bfloat16 with no fp32 master copy")
    assert str(before.value).split(" with ")[1] == str(after.value).split(" with ")[1]


@pytest.mark.parametrize("dtype, use_peft, args", [
    ("float32", False, ARGS),
    ("auto", False, ARGS),  # checked on the loaded model
    ("bfloat16", True, ARGS),  # LoRA adapters are fp32
    ("half", False, SimpleNamespace(deepspeed="ds.json", allow_low_precision_weights=False)),
    ("fp16", False, SimpleNamespace(deepspeed=None, allow_low_precision_weights=True)),
])
def test_master_weight_check_passes_what_keeps_fp32_masters_or_opts_out(dtype, use_peft, args):
    check_master_weights(args, dtype, use_peft)
    frozen = nn.Linear(2, 2).to(torch.bfloat16).requires_grad_(False)
    check_trainable_dtypes(nn.Sequential(nn.Linear(2, 2), frozen), ARGS)  # frozen bf16 weights are fine
