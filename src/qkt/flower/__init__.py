"""qkt as a Flower app: one query of SPEC §2 over Flower messages (flwr >= 1.41 Message API).

- :mod:`~qkt.flower.server_app`: the querier's ServerApp (the query, FedAvg, FedProx);
- :mod:`~qkt.flower.client_app`: every party's ClientApp (probe scores, weights, FedAvg rounds);
- :mod:`~qkt.flower.wire`: the messages as records, and their bytes on the wire;
- :mod:`~qkt.flower.party`: the run config and one party's own data and model;
- :mod:`~qkt.flower.federation`: a SuperLink and SuperNodes on this machine, and ``flwr run``;
- :mod:`~qkt.flower.faults`: rehearsed failures of a teacher.

The `qkt flower` commands are in :mod:`qkt.cli.flower`.

Importing this package needs ``pip install "qkt[flower]"``; qkt's core never imports it.
"""
