"""`task=tldr`: Reddit TL;DR summaries compared by people (Stiennon et al. 2020), the DPO paper's summarization task.

The hub dataset is `openai/summarize_from_feedback`, subset `comparisons`. Its repository holds a loading
script, which current `datasets` no longer runs, so the task reads the hub's auto-converted Parquet branch
(`revision: refs/convert/parquet`, one folder per subset, read with `data_dir: comparisons`) instead, with
the same schema. A row:

    info       {"id": "t3_1x2y3z", "post": "...", "title": "...", "subreddit": "relationships",
                "site": None, "article": None}
    summaries  [{"text": " Boyfriend wants to move ...", "policy": "sup4_ppo_rm4_t.3", "note": None}, {...}]
    choice     0 or 1: the index of the summary the labeller preferred
    worker, batch, split, extra {"confidence": 1-9 or None}

becomes (the post and title stripped, each summary stripped and given one leading space)

    prompt   "SUBREDDIT: r/relationships\\nTITLE: ...\\nPOST: ...\\nTL;DR:"
    chosen   " " + summaries[choice]["text"].strip()
    rejected " " + summaries[1 - choice]["text"].strip()

Every prompt ends with "\\nTL;DR:" (`task.tokenize.prompt_suffix`), which truncation of a long post keeps. The
validation split also holds comparisons of CNN/DailyMail article summaries (`info.post` null, `info.article`
set); the paper's TL;DR task is Reddit only, so those rows are filtered out (`RowFiltered`).
"""

from __future__ import annotations

from typing import Any

from dpo_lightning.data.sources.base import HubSource, as_text
from dpo_lightning.errors import RowFiltered, RowProblem

SUFFIX = "\nTL;DR:"  # every prompt's ending (task.tokenize.prompt_suffix)


def _info_text(info: dict[str, Any], key: str) -> str:
    """`info[key]`, stripped; a `RowProblem` naming `info.<key>` if it is not a string."""
    return as_text(info.get(key), f"info.{key}").strip()


def _summary_texts(summaries: Any) -> list[str]:
    """The two summaries' texts, each stripped and given one leading space."""
    if not isinstance(summaries, list) or len(summaries) != 2:
        got = len(summaries) if isinstance(summaries, list) else type(summaries).__name__
        raise RowProblem(f"summaries: expected two, got {got}")
    texts = [summary.get("text") if isinstance(summary, dict) else None for summary in summaries]
    if not all(isinstance(text, str) for text in texts):
        raise RowProblem("summaries: a summary has no string 'text'")
    return [" " + text.strip() for text in texts]


class TLDRSource(HubSource):
    """`openai/summarize_from_feedback` comparisons → TL;DR prompt / summary triples (Reddit posts only)."""

    required_columns = ("info", "summaries", "choice")

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        info = row["info"]
        if not isinstance(info, dict):
            raise RowProblem(f"info: expected a record, got {type(info).__name__}")
        if info.get("post") is None and info.get("article") is not None:
            raise RowFiltered("news article (CNN/DM) comparison")
        prompt = (
            f"SUBREDDIT: r/{_info_text(info, 'subreddit')}\nTITLE: {_info_text(info, 'title')}\n"
            f"POST: {_info_text(info, 'post')}{SUFFIX}"
        )
        texts = _summary_texts(row["summaries"])
        choice = row["choice"]
        if type(choice) is not int or choice not in (0, 1):
            raise RowProblem(f"choice: expected 0 or 1, got {choice!r}")
        return {"prompt": prompt, "chosen": texts[choice], "rejected": texts[1 - choice]}
