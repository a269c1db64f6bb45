"""The agent's data plane: how records travel between tasks.

Channels between tasks over MQTT (one shared data session, ``datasession``) and NATS
JetStream (``natschannels``), routed per channel by ``transports``; the producing side
(``channels``: ids, batches, credit) and the consuming side (``intake``, ``consuming``:
dedup, reordering, gaps); file edges (``files``); retransmission of what a consumer has
not confirmed (``retransmit``); on-disk spools that keep autonomous edges going while
their broker is out of reach (``outbox``, ``spool``); task checkpoints (``checkpoints``);
record traces (``recordtrace``).

Control stays outside this package: ``app``, ``control``, ``running``, ``heartbeats``,
``identity``, ``localtasks``, ``settings``, ``operators/`` and ``runtimes/``.
"""
