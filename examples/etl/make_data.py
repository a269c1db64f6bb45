"""Rebuild the data slice in data/ from the RIoTBench ETL files (see README.md).

    python examples/etl/make_data.py /path/to/riotbench-etl

copies the taxi sample and the schema without annotation, fixes the swapped units in
the schema with annotation, keeps only the metadata lines of the taxis in the sample,
and writes the ids the Bloom filter is trained with: the sample's taxis whose id starts
with 0-7 (about half of them, so the filter really filters).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data"
SAMPLE = "TAXI_sample_data_senml.csv"


def taxi_ids(sample: Path) -> list[str]:
    ids: dict[str, None] = {}
    for line in sample.read_text().splitlines():
        if line.strip():
            for entry in json.loads(line.split(",", 1)[1])["e"]:
                if entry["n"] == "taxi_identifier":
                    ids[entry["sv"]] = None
    return list(ids)


def main(src: Path) -> None:
    HERE.mkdir(exist_ok=True)
    shutil.copyfile(src / SAMPLE, HERE / SAMPLE)
    shutil.copyfile(src / "taxi-schema-without-annotation.csv", HERE / "taxi-schema-without-annotation.csv")
    # the original swaps the units of pickup_datetime and timestamp (time / timestamp)
    names, units, kinds = (src / "taxi-schema_with_annotation.csv").read_text().splitlines()[:3]
    unit_list = units.split(",")
    fields = names.split(",")
    i, j = fields.index("pickup_datetime"), fields.index("timestamp")
    if unit_list[i] == "timestamp" and unit_list[j] == "time":
        unit_list[i], unit_list[j] = "time", "timestamp"
    (HERE / "taxi-schema_with_annotation.csv").write_text(f"{names}\n{','.join(unit_list)}\n{kinds}\n")

    ids = taxi_ids(HERE / SAMPLE)
    wanted = set(ids)
    meta = [
        line
        for line in (src / "taxi-metadata-fulldataset.txt").read_text().splitlines()
        if line.split(":", 1)[0] in wanted
    ]
    (HERE / "taxi-metadata.txt").write_text("\n".join(meta) + "\n")
    trained = sorted(i for i in ids if i[0] in "01234567")
    header = "# taxi ids the Bloom filter is trained with: the sample's taxis whose id starts with 0-7\n"
    (HERE / "trained-taxi-ids.txt").write_text(header + "\n".join(trained) + "\n")
    summary = f"{len(ids)} taxis in the sample, {len(meta)} metadata lines, {len(trained)} trained ids"
    sys.stdout.write(summary + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/riotbench-etl"))
