"""PromoteFlow: move the `champion` alias of a registered model, gated and audited; roll back; show the history;
promote a branch's version into production.

    python flows/promote_flow.py run --version challenger            # re-check the gate, then promote
    python flows/promote_flow.py run --version 3 --force --reason "hotfix: v4 mislabels refunds"
    python flows/promote_flow.py run --rollback --reason "complaints about v4"
    python flows/promote_flow.py run --history
    python flows/promote_flow.py --production run --source models:/review-classifier.user.alice/3 --reason "..."

Like ReviewFlow it works on its @project branch's registered model (steps/lifecycle/environments.py): your own
runs move `review-classifier.user.<you>`; only a `--production` run moves the production `review-classifier`.
`--source` copies a version of another registered model (a branch's) into this branch's model (MLflow
copy_model_version) and promotes the copy like any other version.

Without --force the gate is re-checked now: the version and the current champion are both scored (each through
its own registered model) on the test split of the ReviewFlow run that trained the version, and it must clear
--min-f1, not regress by more than --max-regression and, with --require-significance, be significantly better.
Every move is appended to the registered model's audit trail (tags audit.*): time, user, from, to, reason, this
Metaflow run, the gate's result.
"""
from metaflow import FlowSpec, Parameter, card, config_expr, current, project, step

from flowkit.launch import main
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, setting_values, settings
from flowkit.project import deploy_config
from schemas import LABEL_COLUMN, TEXT_COLUMN


def test_split_of(metaflow_run: str):
    """The test rows of the ReviewFlow run that trained a version (its `metaflow_run` tag), from Metaflow."""
    from metaflow import Step, namespace
    from metaflow.exception import MetaflowException

    from steps.runtime.errors import ReviewflowError

    namespace(None)  # the run may belong to another user
    try:
        from steps.data.validate import stored_split

        return stored_split(Step(f"{metaflow_run}/evaluate").task.data, "test")
    except (MetaflowException, AttributeError, KeyError) as err:
        raise ReviewflowError(
            f"cannot re-check the gate: the test split of {metaflow_run} is not readable from this Metaflow "
            f"datastore ({type(err).__name__}: {err}). Run PromoteFlow where ReviewFlow ran (same datastore), "
            "or override with --force --reason '...'.") from None


@ship_library
@settings("registered-model", "min-f1", "max-regression", "require-significance")
@project(name=config_expr("deploy.project"))
class PromoteFlow(FlowSpec):
    deploy = deploy_config()
    version = Parameter("version", default="",
                        help="Version to make champion: a number, or an alias such as challenger.")
    source = Parameter("source", default="",
                       help="Promote a version of another registered model (a branch's) into this branch's "
                            "model: models:/<name>/<version> or models:/<name>@<alias>. With --production: into "
                            "production.")
    force = Parameter("force", default=False, type=bool, is_flag=True,
                      help="Promote even if the gate fails (needs --reason; recorded as a forced move).")
    reason = Parameter("reason", default="", help="Why: stored in the audit trail.")
    rollback = Parameter("rollback", default=False, type=bool, is_flag=True,
                         help="Move champion back to the previous champion (per the audit trail).")
    history = Parameter("history", default=False, type=bool, is_flag=True, help="Only show the audit trail.")

    @step
    def start(self):
        from steps import settings
        from steps.lifecycle.environments import registered_model_name
        from steps.runtime import tracking
        from steps.runtime.errors import ReviewflowError

        chosen = [name for name, on in (("--version", bool(self.version)), ("--source", bool(self.source)),
                                        ("--rollback", self.rollback), ("--history", self.history)) if on]
        if len(chosen) != 1:
            raise ReviewflowError("PromoteFlow needs exactly one of --version N|challenger, --source "
                                  "models:/<name>/<version>, --rollback, --history"
                                  + (f"; got {' and '.join(chosen)}" if chosen else ""))
        if self.force and not (self.version or self.source):
            raise ReviewflowError("--force applies to --version and --source only")
        settings.check(setting_values(self, "gate", exclude=("promote", "ignore-baseline")))
        self.action = chosen[0].lstrip("-")
        self.model_name = registered_model_name(self.registered_model, current.branch_name)
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.next(self.move)

    @card(type="blank", id="audit")
    @step
    def move(self):
        from flowkit.cards.audit import history_card
        from steps.lifecycle import promotion
        from steps.runtime import tracking

        mlflow_client = tracking.client(self.tracking_uri)
        name, pathspec = self.model_name, f"{current.flow_name}/{current.run_id}"
        self.moved = None
        if self.action != "history":
            mlflow_run_id = tracking.start_flow_run(self.tracking_uri, current.flow_name, current.run_id,
                                                    flow_parameters(self))
            status = "FAILED"  # a refused move (gate failed, lock busy) ends its MLflow run as FAILED
            try:
                if self.action == "rollback":
                    moved = promotion.rollback(mlflow_client, name, reason=self.reason, metaflow_run=pathspec,
                                               user=current.username)
                else:
                    moved = self.promote_version(mlflow_client, name, pathspec)
                mlflow_client.set_tag(mlflow_run_id, "champion_move", f"v{moved.from_version} -> v{moved.to_version}")
                status = "FINISHED"
            finally:
                tracking.finish_flow_run(self.tracking_uri, mlflow_run_id, status)
            self.moved = moved.__dict__
        self.audit_trail = promotion.history(mlflow_client, name)
        self.champion = promotion.alias_version(mlflow_client, name, promotion.CHAMPION)
        current.card["audit"].extend(history_card(name, self.audit_trail, self.champion))
        self.next(self.end)

    def promote_version(self, mlflow_client, name, pathspec):
        from steps.lifecycle import promotion

        reason = self.reason
        if self.source:
            version, copied = promotion.copy_into(mlflow_client, self.source, name)
            origin = mlflow_client.get_model_version(name, str(version)).tags[promotion.COPIED_FROM]
            print(f"{'copied' if copied else 'found the earlier copy of'} {origin} as '{name}' v{version}")
            reason = f"from {origin}" + (f": {reason}" if reason else "")
        else:
            version = promotion.resolve_version(mlflow_client, name, self.version)
        verdict = None
        if promotion.alias_version(mlflow_client, name, promotion.CHAMPION) != version:
            run_tag = mlflow_client.get_model_version(name, str(version)).tags.get("metaflow_run", "")
            try:
                rows = test_split_of(run_tag)
                verdict, _ = promotion.check_gate(mlflow_client, name, version, rows[TEXT_COLUMN].tolist(),
                                                  rows[LABEL_COLUMN].to_numpy(), self.min_f1, self.max_regression,
                                                  self.require_significance)
            except Exception as err:  # a forced move goes ahead without a verdict; a gated one cannot
                if not self.force:
                    raise
                print(f"gate not re-checked ({type(err).__name__}: {err}); forcing without a verdict")
            else:
                print(f"gate {'passed' if verdict.passed else 'failed'} on {len(rows)} test rows of {run_tag}: "
                      + "; ".join(verdict.reasons))
        return promotion.promote(mlflow_client, name, version, reason=reason, metaflow_run=pathspec,
                                 verdict=verdict, force=self.force, user=current.username)

    @step
    def end(self):
        from steps.lifecycle.promotion import history_lines

        if self.moved:
            m = self.moved
            source = "none" if m["from_version"] is None else f"v{m['from_version']}"
            print(f"champion of {self.model_name}: {source} -> v{m['to_version']} ({m['action']})"
                  if m["changed"] else f"v{m['to_version']} already is the champion; nothing moved")
        print(f"\nAudit trail of {self.model_name} (champion: "
              f"{'none' if self.champion is None else f'v{self.champion}'}):")
        print("\n".join(history_lines(self.audit_trail)))


if __name__ == "__main__":
    main(PromoteFlow)
