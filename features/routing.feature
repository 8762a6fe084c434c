@routing @llama @fixture.queen
Feature: Routing to an idle worker
  The queen sends each request to a worker that has room, and gives the room back afterwards.

  Background:
    Given a real worker "alpha" with 1 slot is registered
    And a real worker "beta" with 1 slot is registered

  Scenario: With one worker busy, the request goes to the idle one
    Given a long answer is streaming from the queen
    When a client asks the queen for 8 tokens of "Hello"
    Then the answer was served by the worker that was not busy
    And the answer ends with a done event
    And that worker becomes idle with all slots free within 5 seconds

  Scenario: A request naming a model only goes to a worker serving it
    Given a real worker "gamma" serving a second model "other-model" is registered
    When a client asks the queen for 4 tokens of "Hello" from model "other-model"
    Then the answer was served by worker "gamma"

  Scenario: A request naming an unknown model is refused with 404
    When a client asks the queen for 4 tokens of "Hello" from model "no-such-model"
    Then the queen refuses with 404 "MODEL_NOT_FOUND"
