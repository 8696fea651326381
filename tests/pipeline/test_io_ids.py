"""prompt_id stability and shard buckets."""

from __future__ import annotations

import hashlib
import json

import pytest

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.ids import ShardSpec, normalize_messages, prompt_id, stable_bucket


def test_string_and_message_list_give_the_same_id():
    from_string = prompt_id(normalize_messages("  What is 2+2?\n"))
    from_list = prompt_id(normalize_messages([{"role": "user", "content": "What is 2+2?"}]))
    assert from_string == from_list


def test_prompt_id_is_sha256_of_canonical_json():
    """Pinned by hand so that a change to the canonical form cannot slip in unnoticed."""
    messages = [{"role": "user", "content": "Héllo"}]
    canonical = '[{"content":"Héllo","role":"user"}]'
    assert json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == canonical
    assert prompt_id(messages) == hashlib.sha256(canonical.encode()).hexdigest()[:32]


def test_system_message_changes_the_id():
    plain = normalize_messages("Be brief.")
    with_system = normalize_messages([{"role": "system", "content": "terse"}, *plain])
    assert prompt_id(plain) != prompt_id(with_system)
    assert len(with_system) == 2


def test_stable_bucket_is_fixed_across_processes():
    # sha256-based, unlike hash(): these values must never change
    assert [stable_bucket(k, 7) for k in ("a", "b", "c")] == [
        int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") % 7 for k in ("a", "b", "c")
    ]


@pytest.mark.parametrize("text", ["3/3", "x/2", "1", "-1/2", "0/0"])
def test_bad_shard_specs_are_refused(text):
    with pytest.raises(PipelineConfigError):
        ShardSpec.parse(text)


def test_shard_specs_partition_keys():
    keys = [f"k{i}" for i in range(200)]
    owners = [[s for s in range(3) if ShardSpec(s, 3).owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    assert ShardSpec.parse(None) == ShardSpec(0, 1) and str(ShardSpec.parse("1/4")) == "1/4"
