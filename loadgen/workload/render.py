"""Turning kept trace rows into the request table: prompts, chat messages, sessions, prefix groups.

Input: reshaped ROW_SCHEMA rows and a ``Synthesizer``. Output: a table conforming
to ``REQUEST_SCHEMA`` with both ``prompt`` and ``messages`` filled on every row.
Text comes from the trace when it has some, else it is synthesized to the row's
token count; Mooncake rows get one shared text block per prefix-hash id.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadgen.workload.prompts import BLOCK_TOKENS, Synthesizer
from loadgen.workload.table import MESSAGE_TYPE, REQUEST_SCHEMA

MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)


def render(rows: pa.Table, synth: Synthesizer, max_input_tokens: Optional[int]) -> tuple[pa.Table, list[str]]:
    """The request table for ``rows`` (in order), and notes about what rendering had to adjust."""
    notes: list[str] = []
    n = rows.num_rows
    rid = rows.column("request_id").to_pylist()
    inputs = rows.column("input_tokens").to_numpy(zero_copy_only=False).astype(np.int64)
    outputs = rows.column("output_tokens").to_numpy(zero_copy_only=False).astype(np.int64)
    session = rows.column("session_id")
    turn = rows.column("turn").fill_null(0)

    if session.null_count == n:
        prompts, inputs = _standalone(rows, rid, inputs, synth, max_input_tokens, notes)
        prompt_arr = prompts if isinstance(prompts, pa.Array) else pa.array(prompts, pa.string())
        roles = pa.array(np.full(n, "user", dtype=object), pa.string())
        # Single-turn messages share the prompt's buffers: no second copy of the text.
        messages = pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32)),
            pa.StructArray.from_arrays([roles, prompt_arr], fields=list(MESSAGE_TYPE)),
            type=MESSAGES_TYPE,
        )
    else:
        prompts, conversations, inputs = _sessions(rows, rid, inputs, outputs, synth, max_input_tokens, notes)
        prompt_arr = pa.array(prompts, pa.string())
        messages = pa.array(conversations, MESSAGES_TYPE)

    arrival = rows.column("arrival_s")
    later = pc.greater(turn, 0)
    arrival = pc.if_else(later, pa.scalar(None, pa.float64()), arrival)
    if synth.inexact:
        notes.append(f"{synth.inexact} prompts could not be made exactly their token count with workload.tokenizer")
    table = pa.Table.from_arrays(
        [
            rows.column("request_id"),
            arrival,
            session,
            turn,
            pa.array(inputs, pa.int32()),
            pa.array(outputs, pa.int32()),
            prompt_arr,
            messages,
            _prefix_groups(rows.column("hash_ids")),
        ],
        schema=REQUEST_SCHEMA,
    )
    return table, notes


def _standalone(
    rows: pa.Table,
    rid: list[str],
    inputs: np.ndarray,
    synth: Synthesizer,
    cap: Optional[int],
    notes: list[str],
) -> tuple[Union[list[str], pa.Array], np.ndarray]:
    """Prompts of requests outside sessions: trace text, Mooncake blocks, or synthesized text."""
    texts = rows.column("user_text")
    if texts.null_count < len(texts):
        return _real_texts(texts.to_pylist(), rid, inputs, synth, cap, notes)
    hashes = rows.column("hash_ids")
    if hashes.null_count < len(hashes):
        return [_blocks(synth, h or [], int(k), r) for h, k, r in zip(hashes.to_pylist(), inputs, rid)], inputs
    if synth.unit == "words":
        return synth.texts(inputs.tolist(), rid), inputs
    return [synth.prompt(int(k), r) for k, r in zip(inputs, rid)], inputs


def _real_texts(
    texts: list[Optional[str]],
    rid: list[str],
    inputs: np.ndarray,
    synth: Synthesizer,
    cap: Optional[int],
    notes: list[str],
) -> tuple[list[str], np.ndarray]:
    """Trace prompts as they are (cut to ``max_input_tokens``); their length is counted, not taken."""
    out, counts, cut = [], np.empty(len(texts), dtype=np.int64), 0
    for i, text in enumerate(texts):
        if text is None:
            text = synth.prompt(int(inputs[i]), rid[i])
        elif cap is not None:
            short = synth.truncate(text, cap)
            cut += short != text
            text = short
        out.append(text)
        counts[i] = synth.count(text)
    if cut:
        notes.append(f"{cut} trace prompts cut to max_input_tokens={cap} {synth.unit}")
    return out, counts


def _blocks(synth: Synthesizer, hash_ids: list[int], n: int, rid: str) -> str:
    """Mooncake: one shared text block per full 512-token hash block, then the rest.

    The rest is the start of the last (partial) block's own text, then text unique to the
    request, so equal leading hash ids give byte-identical prefixes and nothing else is shared.
    """
    full = min(len(hash_ids), n // BLOCK_TOKENS)
    prefix = " ".join(synth.block(h) for h in hash_ids[:full])
    partial = synth.block(hash_ids[full]).split(" ") if len(hash_ids) > full else []

    def fill(m: int) -> str:
        head = " ".join(partial[:m])
        return head if m <= len(partial) else (head + " " if head else "") + synth.text(m - len(partial), rid)

    return synth.fit(n, fill, prefix, prefix_words=full * BLOCK_TOKENS)


def _sessions(
    rows: pa.Table,
    rid: list[str],
    inputs: np.ndarray,
    outputs: np.ndarray,
    synth: Synthesizer,
    cap: Optional[int],
    notes: list[str],
) -> tuple[list[str], list[list[dict]], np.ndarray]:
    """Multi-turn conversations: turn k's messages are turn k-1's, its reply, and the new user text.

    ``input_tokens`` becomes the count of the whole flattened conversation (history included).
    Replies the trace lacks are synthesized to the turn's output length.
    """
    session = rows.column("session_id").to_pylist()
    turn = rows.column("turn").fill_null(0).to_pylist()
    user_text = rows.column("user_text").to_pylist()
    reply_text = rows.column("reply_text").to_pylist()
    words = synth.unit == "words"
    prompts: list[str] = []
    conversations: list[list[dict]] = []
    counts = np.empty(rows.num_rows, dtype=np.int64)
    raised = cut = 0
    history: list[dict] = []
    history_count = 0
    for i in range(rows.num_rows):
        if session[i] is None or turn[i] == 0:
            history, history_count = [], 0
        text = user_text[i]
        if text is None:
            want = int(inputs[i]) - history_count
            raised += want < 1
            text = synth.prompt(max(1, want), rid[i])
        elif cap is not None:
            short = synth.truncate(text, max(1, cap - history_count))
            cut += short != text
            text = short
        messages = history + [{"role": "user", "content": text}]
        prompt = "\n".join(m["content"] for m in messages)
        # Newline-joined words count additively; a tokenizer's merges need a recount.
        counts[i] = history_count + synth.count(text) if words else synth.count(prompt)
        prompts.append(prompt)
        conversations.append(messages)
        reply = reply_text[i]
        if reply is None:
            reply = synth.prompt(int(outputs[i]), rid[i] + "/reply")
        history = messages + [{"role": "assistant", "content": reply}]
        history_count = counts[i] + synth.count(reply) if words else synth.count(prompt + "\n" + reply)
    if raised:
        notes.append(f"{raised} later turns' input_tokens raised to hold their conversation history")
    if cut:
        notes.append(f"{cut} trace turns cut so their prompts fit max_input_tokens={cap} {synth.unit}")
    return prompts, conversations, counts


def _prefix_groups(hash_ids: pa.ChunkedArray) -> pa.Array:
    """The first prefix-block id of each request, where at least two requests share it; else null."""
    n = len(hash_ids)
    if hash_ids.null_count == n:
        return pa.nulls(n, pa.string())
    heads = np.array([h[0] if h else -1 for h in hash_ids.to_pylist()], dtype=np.int64)
    values, counts = np.unique(heads, return_counts=True)
    shared = set(values[(counts > 1) & (values >= 0)].tolist())
    return pa.array([str(h) if h in shared else None for h in heads.tolist()], pa.string())
