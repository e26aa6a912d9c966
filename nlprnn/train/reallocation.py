"""Light RNN's bootstrap inside the one training loop: re-allocate the words after every round of epochs.

`WordReallocation` is an epoch-end hook of `Trainer`. At the end of every `lightrnn.epochs_per_round`
epochs (while training goes on) it

1. runs one no-grad pass over this process's share of the training data, accumulating the (V, R) and (V, C)
   cost matrices (`accumulate_costs`),
2. sums them over processes (all-reduce in float64: every process then holds the costs of the whole data),
3. solves the matching on the main process (`reallocate_words`) and broadcasts the new table,
4. installs it in every process's model, measures the validation perplexity of the same weights with the
   new table, and appends the round's figures to `trainer.state.events`,
5. restarts the plateau schedule's reference (`lightrnn.restart_plateau`), so the first evaluation after
   the move is compared with later ones, not with the perplexity of the old table.

`lightrnn.reallocations` caps the number of moves: after the last one the table stays and training goes on.

The table is a buffer of the model, so the checkpoint written right after the hook carries it, and a run
resumed from there goes on with the re-allocated table; a run killed during the hook redoes the epoch's end
from the previous checkpoint.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from accelerate.utils import broadcast, broadcast_object_list

from nlprnn.config import LightRNNRoundsConfig
from nlprnn.models.reallocate import accumulate_costs, reallocate_words

# Solver figures kept in the run record (the rest of reallocate_words' stats are diagnostics).
_KEPT_STATS = ("solver", "cost_before", "cost_after", "solver_cost", "kept_current", "words_moved", "seconds",
               "candidates", "candidate_rule", "edges", "formulation", "two_phase_cost")


class WordReallocation:
    def __init__(self, rounds: LightRNNRoundsConfig):
        self.rounds = rounds

    def __call__(self, trainer) -> None:
        st = trainer.state
        if self.rounds.solver == "none" or st.epoch % self.rounds.epochs_per_round:
            return
        done = sum(e.get("event") == "reallocation" for e in st.events)
        if self.rounds.reallocations and done >= self.rounds.reallocations:
            return
        acc = trainer.accelerator
        model = trainer.unwrapped
        table = model.table
        start = time.perf_counter()
        row_costs, col_costs = accumulate_costs(model, trainer.task.train_pass(), table.num_rows, table.num_cols,
                                                table.vocab_size, device=acc.device)
        if acc.num_processes > 1:
            row_costs = acc.reduce(row_costs, reduction="sum")
            col_costs = acc.reduce(col_costs, reduction="sum")
        cost_seconds = time.perf_counter() - start

        cells = torch.empty(table.vocab_size, dtype=torch.long, device=acc.device)
        event = [None]
        if acc.is_main_process:
            new_table, stats = reallocate_words(row_costs.cpu().numpy(), col_costs.cpu().numpy(), table,
                                                solver=self.rounds.solver, candidates=self.rounds.candidates,
                                                candidate_rule=self.rounds.candidate_rule)
            cells.copy_(new_table.word_row * table.num_cols + new_table.word_col)
            last = st.history[-1] if st.history else {}
            event[0] = {
                "event": "reallocation",
                "round": done + 1,
                "epoch": st.epoch,
                "step": st.step,
                "valid_ppl_before": last.get("valid_ppl"),
                "cost_seconds": cost_seconds,
                **{key: _plain(stats[key]) for key in _KEPT_STATS if key in stats},
            }
        if acc.num_processes > 1:
            cells = broadcast(cells, from_process=0)
            broadcast_object_list(event, from_process=0)
        table.assign(cells // table.num_cols, cells % table.num_cols)
        # The same weights with the new table: how much the move costs before training adapts to it.
        event[0]["valid_ppl_after"] = trainer.task.evaluate(trainer.model, "valid")["ppl"]
        st.events.append(event[0])
        if self.rounds.restart_plateau:
            trainer.schedule.restart_plateau()
        if acc.is_main_process:
            e = event[0]
            before = "n/a" if e["valid_ppl_before"] is None else f"{e['valid_ppl_before']:.2f}"
            trainer.log({"lightrnn/words_moved": e["words_moved"], "lightrnn/cost_after": e["cost_after"]})
            print(f"re-allocation {e['round']} after epoch {e['epoch']}: cost {e['cost_before']:.6g} -> "
                  f"{e['cost_after']:.6g}, {e['words_moved']} words moved, costs {cost_seconds:.1f} s, "
                  f"{e['solver']} solver {e['seconds']:.1f} s; valid ppl {before} -> "
                  f"{e['valid_ppl_after']:.2f}", flush=True)


def _plain(value):
    """JSON-safe copies of numpy scalars and tuples."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
