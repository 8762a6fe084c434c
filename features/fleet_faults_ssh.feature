@fleet @llama @chaos @ssh
Feature: Faults on hives started over SSH
  The same faults as "Faults across hosts", on hives brought up as a person does it: the operator
  adds alpha and beta with `rbee-keeper hives add` and starts them with `rbee-keeper hives start`
  (the queen runs ssh; each hive detaches from the session and binds to its host's address). Each
  gets one real worker on the default model (2 slots). The queen drops a silent worker after 2
  seconds, gives up on a silent stream after 4, and looks at machines whose hive is not online every
  second, so `rbee-keeper hives list` tells unreachable from offline by itself.

  @fixture.hosts
  Scenario: A host killed under a hive started with hives start: the other serves, the list says unreachable
    Given a queen on the control host and hives on alpha and beta started with rbee-keeper, each with a worker
    Then 4 requests at once are served by the workers of both hosts
    Given a long answer is streaming from the worker of one host
    When that host is killed
    Then its worker leaves routing within 5 seconds
    And the stream on it ends with a "WORKER_UNAVAILABLE" error event and [DONE] within 5 seconds
    And 3 new requests are all served by the other host's worker
    And the queen's hives list shows that host not live
    And rbee-keeper lists that host unreachable within 10 seconds
    And a request pinned to that host is refused with "HIVE_OFFLINE" within 3 seconds, saying what to do
    When that host comes back and the operator starts its hive with rbee-keeper
    Then rbee-keeper lists that host online within 5 seconds

  @fixture.hosts
  Scenario: A cut link under a hive started with hives start is bounded, and the healed one rejoins by itself
    Given a queen on the control host and hives on alpha and beta started with rbee-keeper, each with a worker
    And a long answer is streaming from the worker of one host
    When that host's link is cut
    Then its worker leaves routing within 5 seconds
    And the stream on it ends with a "WORKER_UNAVAILABLE" error event and [DONE] within 5 seconds
    And 3 new requests are all served by the other host's worker
    And the other host's worker has all its slots free
    And rbee-keeper lists that host unreachable within 10 seconds
    When that host's link is healed
    Then its worker is back in routing within 5 seconds
    And rbee-keeper lists that host online within 5 seconds
    And the queen lists each host's worker exactly once
    And a request pinned to that host is served by its worker
