"""Reads what fabric's loggers wrote, with the tools Lightning users use,
and prints it as JSON for tests/loggers.rs.

usage: read_logs.py METRICS_CSV TENSORBOARD_LOG_DIR

Prints {"csv": [row, ...], "scalars": {tag: [[step, value], ...]},
"hparams": {name: value}, "hparam_types": {name: type},
"metrics": [tag, ...], "status": n}.
"""

import csv
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def main() -> None:
    metrics_csv, log_dir = sys.argv[1], sys.argv[2]
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))

    acc = EventAccumulator(log_dir)
    acc.Reload()
    scalars = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    hparams = {}
    for name, value in start.session_start_info.hparams.items():
        hparams[name] = getattr(value, value.WhichOneof("kind"))
    print(
        json.dumps(
            {
                "csv": rows,
                "scalars": scalars,
                "hparams": hparams,
                "hparam_types": {i.name: i.type for i in experiment.experiment.hparam_infos},
                "metrics": [m.name.tag for m in experiment.experiment.metric_infos],
                "status": end.session_end_info.status,
            }
        )
    )


if __name__ == "__main__":
    main()
