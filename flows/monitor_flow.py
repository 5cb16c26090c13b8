"""MonitorFlow: read the inference log since the last check, compare it with the champion, act on drift.

    python flows/monitor_flow.py run --log logs/inference/          # the REVIEWFLOW_INFERENCE_LOG of the server
    python flows/monitor_flow.py run --log s3://bucket/inference --on-drift retrain --retrain-args "--data s3://b/new/"

start (read the log files after the watermark) -> check (drift against the champion: validate's input drift code
plus the prediction side; MLflow run tagged drift=true|false with the figures) -> end (card; on drift: the
`reviews_landed` event on Argo Workflows, the ReviewFlow command to run locally, or a ReviewFlow run with
--on-drift retrain; the new watermark). Thresholds and the watermark: docs/monitoring.md.
"""
from metaflow import Config, FlowSpec, Parameter, card, config_expr, current, project, schedule, step

from flowkit.launch import main
from flowkit.metaflow_internals import choice_type
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, settings
from flowkit.step_runs import closing_flow_run, step_run

ON_DRIFT = ("event", "retrain", "none")


def champion_test_probabilities(mlflow_client, registered_model: str, version: int):
    """(the champion's positive-class probabilities on its test split, a note); from the ReviewFlow run that trained
    it (its `metaflow_run` tag), read from this Metaflow datastore. None with the reason when it is not readable."""
    from metaflow import Step, namespace
    from metaflow.exception import MetaflowException

    metaflow_run = (mlflow_client.get_model_version(registered_model, str(version)).tags or {}).get("metaflow_run")
    if not metaflow_run:
        return None, f"champion v{version} has no metaflow_run tag"
    namespace(None)  # the run may belong to another user
    try:
        return Step(f"{metaflow_run}/evaluate").task.data.test_probabilities, ""
    except (MetaflowException, AttributeError, KeyError) as err:
        return None, f"the test-split predictions of {metaflow_run} are not readable here ({type(err).__name__})"


@ship_library
@settings("registered-model")
@project(name=config_expr("deploy.project"))
@schedule(cron=config_expr("deploy.schedule"))  # used once deployed (Argo Workflows)
class MonitorFlow(FlowSpec):
    deploy = Config("deploy", default_value={"project": "reviewflow", "schedule": "41 * * * *",
                                             "event": "reviews_landed"},
                    help="Deployment settings: project name, cron schedule, the event raised on drift. Override with "
                         "--config deploy FILE.json or --config-value deploy '{...}'.")
    log = Parameter("log", default="",
                    help="The inference log to check: the directory or s3:// prefix set as REVIEWFLOW_INFERENCE_LOG "
                         "where the model is served (empty = this environment's REVIEWFLOW_INFERENCE_LOG).")
    min_records = Parameter("min-records", default=200, type=int,
                            help="Fewer new records than this: say so, claim no drift, and keep them for the next "
                                 "check.")
    settle_seconds = Parameter("settle-seconds", default=120, type=int,
                               help="Read only log files written at least this many seconds ago (newer ones may "
                                    "still be arriving); they are read by the next check.")
    on_drift = Parameter("on-drift", default="event", type=choice_type(ON_DRIFT),
                         help="On drift: event = publish the retraining event on Argo Workflows (run locally: print "
                              "the ReviewFlow command); retrain = run ReviewFlow now (metaflow.Runner); none = only "
                              "report. Allowed: event, retrain, none.")
    retrain_args = Parameter("retrain-args", default="",
                             help="ReviewFlow options for the retraining run (--on-drift retrain) or the printed "
                                  "command, e.g. \"--data s3://bucket/reviews/\".")

    @step
    def start(self):
        import os

        from steps.lifecycle import monitor
        from steps.lifecycle.environments import registered_model_name
        from steps.runtime import tracking
        from steps.runtime.errors import ReviewflowError
        from steps.serving.inference_log import ENV_LOCATION

        if self.min_records < 1:
            raise ReviewflowError(f"--min-records must be at least 1, got {self.min_records}")
        if self.settle_seconds < 0:
            raise ReviewflowError(f"--settle-seconds must be 0 or more, got {self.settle_seconds}")
        self.retrain_params = monitor.parse_retrain_args(self.retrain_args)  # a typo fails now, not after the check
        self.location = monitor.normalize_location(self.log or os.environ.get(ENV_LOCATION, ""))
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.model_name = registered_model_name(self.registered_model, current.branch_name)  # this branch's model
        mlflow_client = tracking.client(self.tracking_uri)
        experiment = mlflow_client.get_experiment_by_name(tracking.experiment_name())
        self.previous_watermark, previous_run = monitor.last_watermark(
            mlflow_client, experiment.experiment_id if experiment else None, self.location)
        files, waiting = monitor.list_new_files(self.location, self.previous_watermark, self.settle_seconds)
        self.records, unreadable = monitor.read_records(files)
        self.window = {"location": self.location, "previous_watermark": self.previous_watermark,
                       "previous_check": previous_run, "files": [f.key for f in files], "waiting": waiting,
                       "unreadable": unreadable, "settle_seconds": self.settle_seconds,
                       "newest_file": files[-1].key if files else ""}
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id, flow_parameters(self),
            tags={monitor.LOG_ID_TAG: monitor.location_id(self.location), monitor.LOG_TAG: self.location[:5000]})
        print(f"Inference log {self.location}: {len(self.records)} records in {len(files)} new file(s) after "
              f"{self.previous_watermark or 'the start'}; {waiting} newer file(s) wait for the next check"
              + (f"; {len(unreadable)} unreadable file(s) skipped: {unreadable[:3]}" if unreadable else "") + ".")
        self.next(self.check)

    @step
    def check(self):
        from steps.data.drift import champion_profile
        from steps.lifecycle import monitor
        from steps.training.models import load_tokenizer

        with step_run(self, "monitor") as run:
            version, profile, why_not = champion_profile(run.client, self.model_name)
            reference, note = None, ""
            if profile is not None and len(self.records) >= self.min_records:
                reference, note = champion_test_probabilities(run.client, self.model_name, version)
            report = monitor.check_window(self.records, profile, version, why_not, load_tokenizer, reference,
                                          self.min_records, self.model_name)
            if note:
                report.notes.append(note)
            self.plots = monitor.monitor_plots(report)
            run.metrics(report.metrics())
            run.tags({"drift": report.drift_tag, "drift_status": report.status})
            run.json({**report.as_dict(), "window": self.window}, "monitoring/report.json")
            for name, png in self.plots.items():
                run.image(png, f"monitoring/{name}")
        self.report = report.as_dict()
        self.drift = report.drift
        print(report.describe())
        self.next(self.end)

    @card(type="blank", id="monitoring")
    @step
    def end(self):
        from flowkit import events
        from flowkit.cards.monitoring import monitoring_card
        from steps.lifecycle import monitor
        from steps.runtime import tracking

        with closing_flow_run(self):
            report = monitor.MonitorReport(**{k: v for k, v in self.report.items()
                                              if k in monitor.MonitorReport.__dataclass_fields__})
            pathspec = f"{current.flow_name}/{current.run_id}"
            self.event_id, self.retrain_run = None, None
            if not report.drift:
                self.action = "none: no drift" if report.judged else "none: not judged"
            elif self.on_drift == "none":
                self.action = "none (--on-drift none)"
            elif self.on_drift == "retrain":
                print(f"Drift: starting ReviewFlow {monitor.retrain_command(self.retrain_args)}", flush=True)
                self.retrain_run, status, results = events.run_review_flow(self.retrain_params)
                self.action = f"ran {self.retrain_run}: {status}" + (
                    f" ({results['retrain_reason']})" if results.get("retrain_reason") else "")
                if status != "successful":
                    from steps.runtime.errors import ReviewflowError

                    raise ReviewflowError(f"the retraining run {self.retrain_run} {status}; its output is above. "
                                          "The watermark stays, so the next check sees this window again.")
            elif events.on_argo():
                payload = monitor.event_payload(report, self.location, pathspec)
                self.event_id = events.publish(self.deploy.event, payload)
                self.action = f"published event {self.deploy.event} (id {self.event_id})"
            else:
                self.action = (f"retraining advised (not on Argo Workflows, so no event was published); run:\n"
                               f"    {monitor.retrain_command(self.retrain_args)}\n"
                               f"or let a deployed ReviewFlow start: python -c \"from metaflow.integrations import "
                               f"ArgoEvent; ArgoEvent('{self.deploy.event}').publish()\"")
            judged_or_final = report.status != "too_few"
            self.watermark = (self.window["newest_file"] or self.previous_watermark) if judged_or_final \
                else self.previous_watermark
            mlflow_client = tracking.client(self.tracking_uri)
            for key, value in {"drift": report.drift_tag, "drift_status": report.status,
                               monitor.WATERMARK_TAG: self.watermark, "monitor_action": self.action[:5000]}.items():
                mlflow_client.set_tag(self.mlflow_run_id, key, value)
            current.card.extend(monitoring_card(report, self.window, self.plots, self.action, self.mlflow_run_id,
                                                self.records.sort_values(
                                                    "probability_positive",
                                                    key=lambda p: (p - 0.5).abs()) if len(self.records) else None))
            tracking.finish_flow_run(self.tracking_uri, self.mlflow_run_id,
                                     outcome="drift" if report.drift else report.status)
            print(f"Action: {self.action}\nWatermark: {self.watermark or '(none yet)'}"
                  + ("" if self.watermark != self.previous_watermark or not self.window["files"]
                     else " (unchanged: these records count again next time)"))


if __name__ == "__main__":
    main(MonitorFlow)
