"""The deployment settings every flow shares: the @project name (so all flows agree on branches), the schedule and
the event ReviewFlow retrains on. Override with `--config deploy FILE.json` or `--config-value deploy '{...}'`."""
from metaflow import Config

DEPLOY_DEFAULTS = {"project": "reviewflow", "schedule": "17 3 * * *", "event": "reviews_landed"}


def deploy_config() -> Config:
    return Config("deploy", default_value=DEPLOY_DEFAULTS,
                  help="Deployment settings: project name, cron schedule, trigger event. Override with "
                       "--config deploy FILE.json or --config-value deploy '{...}'.")
