@llama @cache @routing
Feature: Conversations go back to the worker that holds their history
  Every turn of a chat resends the whole history. The queen remembers which worker it sent which
  prompt prefixes to and sends the next turn there, where the worker's prompt cache skips what it has
  decoded already, unless that worker carries clearly more load than the least loaded one.

  Scenario: Eight conversations over two workers stay put, split across both, and reuse more each turn
    Given a queen
    And two real workers "left" and "right" with 4 slots each are registered
    When 8 conversations of 4 turns each are held through the queen, one turn at a time
    Then every turn after the first went, by cache, to the worker of its conversation's first turn
    And the conversations were split across both workers
    And every conversation's cached prompt tokens grew turn by turn

  Scenario: A request that opts out of the cache is routed by load alone
    Given a queen
    And two real workers "left" and "right" with 4 slots each are registered
    When a conversation of 3 turns that opts out of the cache is held through the queen
    Then every one of its turns was routed by load and reused nothing

  Scenario: A conversation its worker has since evicted is routed by load, not sent back for a cache that is gone
    Each worker reports in its done events what its slots hold now, so the queen follows the workers'
    evictions instead of its own history of what it sent where.
    Given a queen
    And two real workers "left" and "right" with one slot each are registered
    When 3 conversations start through the queen one after another, then each takes its second turn, the latest first
    Then a second turn went back by cache exactly when its worker's one slot still held the conversation
