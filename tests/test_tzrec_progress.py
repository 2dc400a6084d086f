"""tzrec's log read as it is written: its lines parsed (recbuild.tzrec.progress) and shown on the
step's progress line (LogProgress). The same path under the real tzrec, through the CLI's CI
heartbeat: tests/test_tzrec_pipeline.py."""

from __future__ import annotations

import threading
import time

from recbuild.builders.base import Progress
from recbuild.builders.tzrec_step import LogProgress
from recbuild.tzrec.progress import LogEvent, LogFollower, parse
from recbuild.ui.terminal import describe

# Lines as tzrec-sekai 0.9.6 writes them (through torchrun, which may prefix a rank)
TRAIN = ("[2026-12-06 23:44:21,391][INFO] Training Epoch 1: 150it [8.90it/s] lr_g0:0.01000 "
         "lr_g1:0.01000 softmax_cross_entropy:5.07434 total_loss: 5.07434")
SAVE = "[2026-12-06 23:44:20,463][INFO] Saving checkpoint to build/.recbuild/tmp/c-1/model.ckpt-200..."
EVALUATING = "[2026-12-06 23:44:20,900][INFO] Evaluating Epoch-1 model-200: 3it [12.10it/s] "
RESULT = ("[rank0]: [2026-12-06 23:44:21,037][INFO] Eval Result Epoch-1 model-200: recall@1:0.004000 "
          "recall@5:0.022000 softmax_cross_entropy:5.540809")
PREDICT = "[2026-12-06 23:45:02,000][INFO] Predicting: 20it [31.02it/s] "


def test_tzrec_lines_are_parsed():
    assert parse(TRAIN) == LogEvent("train", step=150, epoch=1,
                                    figures={"softmax_cross_entropy": 5.07434, "total_loss": 5.07434})
    assert parse(SAVE) == LogEvent("checkpoint", step=200)
    assert parse(EVALUATING) == LogEvent("evaluating", step=200, epoch=1, batches=3)
    assert parse(RESULT) == LogEvent("eval", step=200, epoch=1, figures={
        "recall@1": 0.004, "recall@5": 0.022, "softmax_cross_entropy": 5.540809})
    assert parse(PREDICT) == LogEvent("predict", batches=20)
    plain = parse("[2026-12-06 23:50:00,000][INFO] Eval Result: auc:0.710000 grouped_auc:nan")
    assert (plain.what, plain.step, plain.figures["auc"]) == ("eval", None, 0.71)
    assert plain.figures["grouped_auc"] != plain.figures["grouped_auc"]  # nan stays nan
    assert parse("[2026-12-06 23:44:22,115][INFO] Train and Evaluate Finished.") == LogEvent("finished")
    for other in ("", "W1206 23:42:37.117000 8000 torch/fx/_symbolic_trace.py:56] is_fx_tracing",
                  "[2026-12-06 23:44:22,115][INFO] model: DSSM", "Training Epoch x"):
        assert parse(other) is None


def test_the_progress_line_shows_step_epoch_loss_and_eval_figures():
    progress = Progress(None, "").phase("running tzrec.train_eval")
    shown = LogProgress(progress, steps=471, epochs=3)
    for line in (TRAIN, SAVE, EVALUATING, RESULT):
        shown.line(line)
    assert (progress.unit, progress.total, progress.done) == ("steps", 471, 151)  # step 150 is the 151st
    text = describe(progress, 12.0)
    assert text.startswith("training, epoch 2/3, 151/471 steps"), text
    for part in ("loss 5.0743", "eval recall@1 0.0040", "eval recall@5 0.0220", "12.0s"):
        assert part in text, text
    shown.line(TRAIN.replace("150it", "300it"))  # the count goes on after an evaluation
    assert progress.done == 301 and progress.phase_name == "training, epoch 2/3"
    shown.line("[2026-12-06 23:44:22,115][INFO] Train and Evaluate Finished.")
    assert progress.phase_name == "finishing" and progress.done == 471  # done, whatever it last logged
    progress.phase_started -= 60  # a minute later: no rate that only decays, and no ETA
    assert describe(progress, 72.0).startswith("finishing, 471/471 steps, loss 5.0743"), describe(progress, 72.0)

    predicting = Progress(None, "")
    LogProgress(predicting).line(PREDICT)
    assert describe(predicting, 3.0).startswith("predicting, 20 batches")


def test_the_follower_reads_lines_as_they_are_written(tmp_path):
    log = tmp_path / "x.tzrec.log"
    log.write_bytes(b"$ the command line\n")
    seen: list[str] = []
    arrived = threading.Event()

    def on_line(text: str) -> None:
        seen.append(text)
        if text == "second":
            arrived.set()
        if text == "boom":
            raise RuntimeError("a display error never stops the follower")

    with LogFollower(log, on_line, offset=log.stat().st_size):
        with open(log, "ab") as fh:
            fh.write(b"first\nboom\nsec")
            fh.flush()
            time.sleep(0.1)
            fh.write(b"ond\n")
            fh.flush()
        assert arrived.wait(10), seen  # read while the tool still runs, not after
        with open(log, "ab") as fh:
            fh.write(b"last\n")
    assert seen == ["first", "boom", "second", "last"]  # what was left is read at stop
