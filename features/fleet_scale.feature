@fleet_scale
Feature: The queen at fleet scale: liveness that trusts moving streams, and a bound on streams
  A busy worker's health answer can be slow while its threads hold the cores. The queen counts a stream
  it is relaying that keeps moving as a sign of its worker's life, so such a worker is never taken out
  of routing for a slow probe; one that really stops (frozen, dead) still leaves routing within the
  heartbeat timeout. Scripted workers (rbee.testing.fake_worker): a real one cannot answer slowly on cue.

  Scenario: A streaming worker whose health answers slowly stays in routing, and its streams complete
    Given a queen that checks liveness with a 2 second heartbeat timeout
    And a scripted worker "sluggish" with 4 slots whose health takes 3 seconds while it is busy
    When 2 clients each start streaming 300 tokens through the queen
    Then worker "sluggish" stays in routing for 4 seconds while it streams, and serves a new request meanwhile
    And every one of those streams ends with a done event of 300 tokens
    When worker "sluggish" freezes while it streams
    Then worker "sluggish" is out of routing within 8 seconds

  Scenario: Beyond --max-streams the queen answers 503 TOO_MANY_STREAMS and the streams within it complete
    Given a queen that relays at most 2 streams at once
    And a scripted worker "roomy" with 4 slots whose health takes 0 seconds while it is busy
    When 2 clients each start streaming 200 tokens through the queen
    Then a third stream through the queen is answered 503 "TOO_MANY_STREAMS" with a Retry-After header
    And every one of those streams ends with a done event of 200 tokens
    And a stream through the queen is served again once they are done
