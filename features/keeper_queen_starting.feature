@keeper_queen_starting
Feature: rbee-keeper waits for a queen that is starting
  A person who runs `rbee-keeper infer` while the queen is still starting (just restarted, `rbee-keeper
  up` in another shell) gets the answer, not an error: a refused connection is tried again on a
  bounded backoff (about 8 s, said once on stderr), and a queen that was starting is given a few
  seconds for its workers to register again. The queen is at 127.0.0.2, an address the keeper takes for
  another machine, so it waits for that queen rather than starting a local one.

  @llama
  Scenario: rbee-keeper infer started before the queen listens still prints the streamed answer
    Given a real worker "late" with 1 slot, not yet known to any queen
    And rbee-keeper points at a queen on 127.0.0.2 that is not listening yet
    When the user starts rbee-keeper infer "The capital of France is" for 8 tokens
    And rbee-keeper has said the queen refused the connection
    And the queen starts on that address a moment later and worker "late" registers with it
    Then rbee-keeper exits with code 0 within 60 seconds
    And rbee-keeper printed the generated text
    And rbee-keeper's stderr says the queen refused the connection once
