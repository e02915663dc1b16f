"""ShareGPT-style conversations: multi-turn sessions with real text and no arrival times.

Input: a JSON array (or JSON Lines) of ``{"id", "conversations": [{"from", "value"}]}``
with alternating human and model turns. Output: a ``Source`` with one row per human
turn: its text, the reply's text when there is one, and lengths counted by the
synthesizer (words, or tokens of ``workload.tokenizer``). A turn without a reply gets
its output length from ``workload.output_tokens``. The schedule draws session arrivals.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa

from loadgen.config import WorkloadConfig
from loadgen.workload.errors import shown
from loadgen.workload.parse import got, json_array_items, jsonl_objects
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.synthetic import check_dist, draw_lengths
from loadgen.workload.trace import Source, row_batch, session_ids, turn_ids

USER_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "chatgpt", "bard", "bing", "assistant", "model"})
SYSTEM_ROLES = frozenset({"system"})
ROLE_EXPECTED = "human or gpt (or user, assistant, system)"
_BATCH = 2048  # conversations per batch

Turn = tuple[str, Optional[str]]  # (user text, reply text or None)


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Stream ShareGPT-style conversations into session rows; bad ones raise or are skipped per ``on_error``."""
    check_dist(cfg.output_tokens, "workload.output_tokens", 1)
    src = Source.for_file(str(cfg.path), "sharegpt", cfg.on_error, has_arrivals=False)
    src.batches = _rows(src, cfg, synth)
    return src


def _items(src: Source) -> Iterator[tuple[int, Any]]:
    with open(src.path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    return json_array_items(src) if head.startswith("[") else jsonl_objects(src)


def _rows(src: Source, cfg: WorkloadConfig, synth: Synthesizer) -> Iterator[pa.RecordBatch]:
    rng = np.random.default_rng(cfg.seed)
    counts: Counter = Counter()
    pending: list[tuple[int, list[Turn]]] = []
    seq = 0
    for index, (line, item) in enumerate(_items(src)):
        turns = _turns(src, line, item, counts)
        if turns is None:
            continue
        if not turns:
            src.remove("conversations without a human turn", 1)
            continue
        if cfg.max_turns is not None and len(turns) > cfg.max_turns:
            src.remove(f"workload.max_turns={cfg.max_turns} (later turns)", len(turns) - cfg.max_turns)
            turns = turns[: cfg.max_turns]
        pending.append((index, turns))
        if len(pending) >= _BATCH:
            batch = _batch(pending, seq, cfg, synth, rng, counts)
            seq += batch.num_rows
            pending = []
            yield batch
    if pending:
        yield _batch(pending, seq, cfg, synth, rng, counts)
    for what, n in counts.items():
        src.notes.append(f"{n} {what}")


def _turns(src: Source, line: int, item: Any, counts: Counter) -> Optional[list[Turn]]:
    """A conversation's (user, reply) turns, or None when it is malformed (raised or counted)."""
    issues = src.issues
    if not isinstance(item, dict):
        issues.report(line, None, "a conversation object", f"a JSON {type(item).__name__}")
        return None
    conv = item.get("conversations")
    if not isinstance(conv, list):
        issues.report(line, "conversations", "a list of {from, value} messages", got(item, "conversations"))
        return None
    messages: list[list[str]] = []
    for i, msg in enumerate(conv):
        if not isinstance(msg, dict):
            issues.report(line, f"conversations[{i}]", "an object with from and value", shown(msg))
            return None
        role = msg.get("from")
        name = role.lower() if isinstance(role, str) else None
        if name in USER_ROLES:
            role = "user"
        elif name in ASSISTANT_ROLES:
            role = "assistant"
        elif name in SYSTEM_ROLES:
            counts["system messages dropped"] += 1
            continue
        else:
            issues.report(line, f"conversations[{i}].from", ROLE_EXPECTED, got(msg, "from"))
            return None
        value = msg.get("value")
        if not isinstance(value, str):
            issues.report(line, f"conversations[{i}].value", "a string", got(msg, "value"))
            return None
        if messages and messages[-1][0] == role:
            messages[-1][1] += "\n" + value
            counts["consecutive same-role messages merged"] += 1
        else:
            messages.append([role, value])
    while messages and messages[0][0] == "assistant":
        messages.pop(0)
        counts["leading model messages dropped"] += 1
    return [
        (messages[i][1], messages[i + 1][1] if i + 1 < len(messages) else None)
        for i in range(0, len(messages), 2)
    ]


def _batch(
    conversations: list[tuple[int, list[Turn]]],
    seq: int,
    cfg: WorkloadConfig,
    synth: Synthesizer,
    rng: np.random.Generator,
    counts: Counter,
) -> pa.RecordBatch:
    users, replies, index, turn = [], [], [], []
    for conv, turns in conversations:
        for k, (user, reply) in enumerate(turns):
            users.append(user)
            replies.append(reply if reply is not None and reply.strip() else None)
            index.append(conv)
            turn.append(k)
    user_len = np.array([synth.count(u) for u in users], dtype=np.int64)
    missing = np.array([r is None for r in replies], dtype=bool)
    out = np.zeros(len(users), dtype=np.int64)
    out[~missing] = [synth.count(r) for r in replies if r is not None]
    drawn, clipped = draw_lengths(cfg.output_tokens, int(missing.sum()), rng)
    out[missing] = drawn
    if missing.any():
        counts["turns without a reply: output_tokens drawn from workload.output_tokens"] += int(missing.sum())
    if clipped:
        counts["drawn output lengths clipped to workload.output_tokens [min, max]"] += clipped
    # A turn's prompt is every earlier message plus its own: sum lengths within each conversation.
    turn_arr = np.array(turn, dtype=np.int64)
    step = user_len + out
    before = np.cumsum(step) - step
    start_of_conv = before[np.flatnonzero(turn_arr == 0)]
    conv_no = np.cumsum(turn_arr == 0) - 1
    inputs = before - start_of_conv[conv_no] + user_len
    sessions = session_ids(np.array(index, dtype=np.int64))
    return row_batch(
        len(users),
        seq=np.arange(seq, seq + len(users), dtype=np.int64),
        unit=np.array(index, dtype=np.int64),
        request_id=turn_ids(sessions, turn_arr),
        session_id=sessions,
        turn=np.array(turn, dtype=np.int32),
        input_tokens=inputs,
        output_tokens=out,
        user_text=users,
        reply_text=replies,
    )
