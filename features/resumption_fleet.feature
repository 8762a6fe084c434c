@fleet @llama @chaos @resume
Feature: A stream goes on across hosts
  Two hosts of the test bed each run a hive with one real worker on the default model; the queen on
  the control host resumes streams (--max-resumes 1). When the host serving a stream dies (its link
  goes first, so packets just vanish), the stall timeout notices and the answer goes on on the other
  host's worker.

  @fixture.hosts
  Scenario: A host killed mid-stream: the answer goes on on the other host, equal to an unbroken one
    Given a queen on the control host that resumes streams, and a hive with a worker on each of alpha and beta
    When a client streams 160 tokens of a story at temperature 0 through the queen, unbroken
    And a client streams 160 tokens of a story at temperature 0 and the serving worker's host is killed after 12 tokens
    Then the stream ends with a done event and [DONE], with no error
    And its token events are numbered from 0 without a gap or a repeat
    And its text is the unbroken answer's
    And the done event says it resumed on the other worker where the first left off
