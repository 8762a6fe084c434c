@fleet @testbed
Feature: A test bed of real hosts
  The fleet features run hives on hosts reached only through the network: each host a network
  namespace with its own address and SSH server, on one private switch with the control host,
  where the queen runs. A host's link can be cut and healed, and a host can be killed outright.

  @fixture.hosts
  Scenario: Each host is a machine of its own, reached over SSH
    Then the control host logs in to alpha and to beta over SSH, each reporting its own address
    And alpha and beta reach the control host and each other
    And no host has a route beyond the test bed

  @fixture.hosts
  Scenario: A cut link drops packets without a reset, and healing it resumes the connection
    Given an SSH session open from the control host to alpha
    When alpha's link is cut
    Then the session to alpha gets no answer for 2 seconds and stays open
    And a new connection to alpha's SSH server times out
    And the control host still logs in to beta over SSH
    When alpha's link is healed
    Then the session to alpha answers again within 15 seconds

  @fixture.hosts
  Scenario: A killed host goes silent, and comes back with nothing running
    Given an SSH session open from the control host to alpha
    And a program left running on alpha over SSH
    When host alpha is killed
    Then nothing runs on alpha
    And a new connection to alpha's SSH server times out
    And the session to alpha gets no answer for 1 second and stays open
    And the control host still logs in to beta over SSH
    When alpha's link is healed
    Then a new connection to alpha's SSH server is refused
    And the session to alpha is reset as soon as it sends
    When alpha's SSH server is started again
    Then the control host logs in to alpha over SSH

  Scenario: Closing a test bed leaves nothing behind
    Given a test bed of hosts gamma and delta, with a program left running on each
    When the test bed is closed
    Then nothing of that test bed is left: no namespace, link or process

  Scenario: A test bed whose setup fails half way leaves nothing behind
    When a test bed of hosts gamma and delta is started where delta's SSH server cannot start
    Then starting it fails, naming delta
    And nothing of that test bed is left: no namespace, link or process
