"""CompareFlow: which model should I use? Train and score several candidates on the same data, side by side.

    python flows/compare_flow.py run --models minilm,mpnet,tfidf
    python flows/compare_flow.py run --models distilbert-base-uncased,bert-base-uncased --max-rows 2000
    python flows/compare_flow.py run --models minilm,tfidf,minilm[epochs=3,learning-rate=1e-4] --cv-folds 5

start -> ingest -> validate -> split -> candidate (foreach model) -> fold (foreach fold) -> join_folds
-> join_candidates -> end. The data is read, mapped, validated and split exactly as ReviewFlow does (same options,
same contract, same grouped split); every candidate is trained by the same engine with the same settings. With
`--cv-folds K` each candidate is trained K times on grouped, stratified folds and the table shows mean ± std.
Tasks run one at a time unless `--max-workers` says otherwise, so the speed figures do not compete for the CPU.
The end step's card has the table and an accuracy-vs-latency plot, and prints the ReviewFlow command that trains
the chosen candidate. MLflow: one parent run, one child run per candidate. The work is in
steps/evaluation/compare.py.
"""
from metaflow import FlowSpec, Parameter, card, current, step

from flowkit.launch import main
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, settings
from flowkit.step_runs import step_run

# ReviewFlow's data options (but --fail-on-drift: there is no champion to drift from), --max-length and training.
COMPARED_SETTINGS, NOT_COMPARED = ("data", "max-length", "training"), ("fail-on-drift",)


@ship_library
@settings(*COMPARED_SETTINGS, exclude=NOT_COMPARED)
class CompareFlow(FlowSpec):
    models = Parameter("models", default="minilm,tfidf",
                       help="Candidates, comma-separated: any --model value ReviewFlow accepts (minilm, mpnet, a "
                            "Hub id, a save_pretrained directory) or tfidf (TF-IDF + logistic regression); a "
                            "candidate may carry its own training settings, e.g. minilm[epochs=3,learning-rate=1e-4].")
    cv_folds = Parameter("cv-folds", default=0, type=int,
                         help="0: one grouped train/validation/test split, as ReviewFlow's. K (2-20): grouped, "
                              "stratified K-fold cross-validation by reviewId; the table shows mean ± std.")
    extra_data = Parameter("extra-data", default="",
                           help="Comma-separated labelled files (read like --data) that every candidate also scores: "
                                "one accuracy column each, e.g. out-of-domain reviews.")

    @step
    def start(self):
        from steps import settings as catalog
        from steps.data.folds import MAX_FOLDS
        from steps.evaluation.compare import check_candidates, parse_candidates
        from steps.runtime import tracking
        from steps.runtime.errors import ReviewflowError

        self.values = {s.name: getattr(self, s.attr) for s in catalog.select(*COMPARED_SETTINGS)
                       if s.name not in NOT_COMPARED}
        catalog.check(self.values)
        if self.cv_folds != 0 and not 2 <= self.cv_folds <= MAX_FOLDS:
            raise ReviewflowError(f"--cv-folds must be 0 (one train/validation/test split) or 2 to {MAX_FOLDS}, "
                                  f"got {self.cv_folds}")
        self.candidates = parse_candidates(self.models)
        check_candidates(self.candidates)
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.mlflow_run_id = tracking.start_flow_run(self.tracking_uri, current.flow_name, current.run_id,
                                                     flow_parameters(self))
        folds = f"{self.cv_folds}-fold grouped cross-validation" if self.cv_folds else "one grouped split"
        rows = "all rows" if not self.max_rows else f"{self.max_rows} rows"
        epochs = f"{self.epochs} epoch(s)" if self.epochs else "each model's recipe of epochs"
        print(f"Plan: compare {', '.join(c.spec for c in self.candidates)} on {rows} of {self.data} ({folds}); "
              f"{epochs}, batch {self.batch_size}, lr {self.learning_rate}, max_length "
              f"{self.max_length}, seed {self.seed}.\nMLflow: {self.tracking_uri} (run {self.mlflow_run_id}).")
        self.next(self.ingest)

    @step
    def ingest(self):
        from flowkit.data_steps import ingest_step
        from steps.evaluation.compare import load_extra

        result = ingest_step(self)
        self.reviews, self.review_origin, self.ingest_rejects = result.frame, result.origin, result.rejected
        self.fingerprint = result.fingerprint
        self.extra_sets = load_extra(self.extra_data, self.seed)
        self.next(self.validate)

    @step
    def validate(self):
        from flowkit.data_steps import validate_step

        report = validate_step(self)
        self.clean, self.validation = report.clean, report.metrics()
        self.next(self.split)

    @step
    def split(self):
        from steps.data.folds import grouped_folds
        from steps.data.split import split_reviews

        with step_run(self, "split") as run:
            self.folds = (grouped_folds(self.clean, self.cv_folds, self.seed) if self.cv_folds
                          else [split_reviews(self.clean, seed=self.seed)])
            for i, fold in enumerate(self.folds):
                run.metrics({f"{name}_rows": n for name, n in fold.sizes().items()}, step=i)
        self.fold_ids = list(range(len(self.folds)))
        self.candidate_specs = [c.spec for c in self.candidates]
        print("Folds (train/validation/test rows): " + "; ".join(
            "/".join(str(n) for n in f.sizes().values()) for f in self.folds))
        self.next(self.candidate, foreach="candidate_specs")

    @step
    def candidate(self):
        from steps.evaluation.compare import candidate_values, open_candidate_run
        from steps.runtime import tracking

        self.candidate_spec = self.input
        chosen = next(c for c in self.candidates if c.spec == self.input)
        self.candidate_run_id = open_candidate_run(tracking.client(self.tracking_uri), self.mlflow_run_id, chosen,
                                                   candidate_values(self.values, chosen), current.pathspec)
        self.next(self.fold, foreach="fold_ids")

    @step
    def fold(self):
        from steps.evaluation.compare import candidate_values, log_fold, run_candidate
        from steps.runtime import threads, tracking

        chosen = next(c for c in self.candidates if c.spec == self.candidate_spec)
        values = candidate_values(self.values, chosen)
        print(f"{chosen.spec}: fold {self.input + 1} of {len(self.folds)}")
        # Speed and size are measured once per candidate (fold 0): they do not depend on the fold. The lease: with
        # --max-workers > 1 folds train side by side, each on its share of the cores (steps/runtime/threads.py).
        with threads.lease():
            self.row = {**run_candidate(chosen, self.folds[self.input], values, seed=self.seed,
                                        measure=self.input == 0, extra=self.extra_sets), "fold": self.input}
        log_fold(tracking.client(self.tracking_uri), self.candidate_run_id, self.row, self.input)
        self.next(self.join_folds)

    @step
    def join_folds(self, inputs):
        from steps.evaluation.compare import aggregate, close_candidate_run
        from steps.runtime import tracking

        # The folds and the extra data served the fold tasks; a task that read them stores them again, and a
        # re-pickled frame need not be byte-identical, which merge_artifacts would call a conflict.
        self.merge_artifacts(inputs, exclude=["row", "folds", "extra_sets"])
        rows = sorted((i.row for i in inputs), key=lambda r: r["fold"])
        self.result = {**aggregate(rows), "fold_rows": rows}
        close_candidate_run(tracking.client(self.tracking_uri), self.candidate_run_id, self.result)
        self.next(self.join_candidates)

    @step
    def join_candidates(self, inputs):
        self.merge_artifacts(inputs, exclude=["result", "candidate_spec", "candidate_run_id"])
        order = {spec: i for i, spec in enumerate(inputs[0].candidate_specs)}
        self.results = sorted((i.result for i in inputs), key=lambda r: order[r["candidate"]])
        self.next(self.end)

    @card(type="blank", id="comparison")
    @step
    def end(self):
        from flowkit.cards.comparison import comparison_card
        from steps.evaluation.compare import TFIDF, accuracy_latency_plot, ranked, review_flow_command, table_lines
        from steps.runtime import tracking

        best = ranked(self.results)[0]
        transformer = next((r for r in ranked(self.results) if r["model"] != TFIDF), None)
        self.chosen = best["candidate"]
        self.train_command = review_flow_command(transformer, self.values) if transformer else None
        plot = accuracy_latency_plot(self.results)
        lines = table_lines(self.results)
        current.card["comparison"].extend(comparison_card(self.results, plot, self.chosen, transformer,
                                                          self.train_command, self.cv_folds, self.data,
                                                          self.validation))
        run = tracking.StepRun(tracking.client(self.tracking_uri), self.mlflow_run_id)
        run.json(self.results, "comparison/comparison.json")
        run.text("\n".join(lines + ["", f"chosen: {self.chosen}", f"train it: {self.train_command}"]),
                 "comparison/table.txt")
        run.image(plot, "comparison/accuracy_vs_latency.png")
        run.tags({"chosen": self.chosen, "train_command": self.train_command or ""})
        run.flush()
        tracking.finish_flow_run(self.tracking_uri, self.mlflow_run_id, outcome="compared")
        print("\n".join(["", f"=== {current.flow_name}/{current.run_id}: {len(self.results)} candidates on "
                             f"{self.data} ===", *lines, "", f"best: {self.chosen}"]
                        + ([f"train {transformer['candidate']} with ReviewFlow: {self.train_command}"]
                           if transformer else [])
                        + [f"card: python flows/compare_flow.py card view {current.run_id}/end"]))


if __name__ == "__main__":
    main(CompareFlow, run_defaults={"--max-workers": "1"})
