@fleet @llama @chaos
Feature: Faults across hosts
  Two hosts of the test bed, alpha and beta, each run a hive (started in the host's namespace, bound
  to the host's own address) with one real worker on the default model (2 slots, warmed up with one
  answer); the queen runs on the control host and reaches them only over the bed's switch. It drops
  a silent worker from routing after 2 seconds (--heartbeat-timeout) and gives up on a stream that
  sends nothing for 4 seconds (--stall-timeout: what bounds a link whose packets vanish). Each fault
  prints what it measured ("measured: ...").

  @fixture.hosts
  Scenario: Requests spread across the hosts, and a host killed mid-stream leaves the other serving
    Given a queen on the control host and a hive with a worker on each of alpha and beta
    Then 4 requests at once are served by the workers of both hosts
    Given a long answer is streaming from the worker of one host
    When that host is killed
    Then its worker leaves routing within 5 seconds
    And the stream on it ends with a "WORKER_UNAVAILABLE" error event and [DONE] within 5 seconds
    And 3 new requests are all served by the other host's worker
    And the queen's hives list shows that host not live

  @fixture.hosts
  Scenario: A cut link is bounded by the stall timeout, and a healed one rejoins by itself
    Given a queen on the control host and a hive with a worker on each of alpha and beta
    And a long answer is streaming from the worker of one host
    When that host's link is cut
    Then its worker leaves routing within 5 seconds
    And the stream on it ends with a "WORKER_UNAVAILABLE" error event and [DONE] within 5 seconds
    And 3 new requests are all served by the other host's worker
    And the other host's worker has all its slots free
    And the queen's hives list shows that host not live
    When that host's link is healed
    Then its worker is back in routing within 5 seconds
    And the queen's hives list shows that host live
    And the queen lists each host's worker exactly once
    And a request pinned to that host is served by its worker

  @fixture.hosts
  Scenario: A restarted queen has the workers of both hosts back within a heartbeat and a second
    Given a queen on the control host and a hive with a worker on each of alpha and beta
    When the queen on the control host is killed and started again on the same address and state dir
    Then the restarted queen routes to the workers of both hosts within 3 seconds
    And the queen lists each host's worker exactly once
    And 4 requests at once are served by the workers of both hosts
