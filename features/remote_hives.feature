@fleet @ssh
Feature: Hives on other machines, brought up over SSH
  The queen keeps a registry of the machines it manages and runs the system's ssh client to install
  rbee there (offline: a wheelhouse built on the control host is copied over), to start the hive
  detached from the session, and to stop it. rbee-keeper is the front end. Every SSH failure is said
  in one line with the next step. The hosts are network namespaces, each with its own address and
  sshd and no route beyond the test bed; the operator's key is given with --identity.

  Background:
    Given a queen on the control host that manages hives over SSH

  @fixture.hosts @slow @llama
  Scenario: A hive installed without internet, started, listed, read, used and stopped
    When the operator adds hive "alpha" over SSH
    Then rbee-keeper says that rbee-hive is not installed on alpha yet
    When the operator installs rbee on hive "alpha"
    Then alpha runs this version of rbee-hive from its own virtualenv
    When the operator starts hive "alpha"
    Then the hives list shows alpha online, of this version, with a heartbeat seconds ago
    And no process listing on alpha shows the cluster key
    And the operator reads the hive's log on alpha, and follows it until Ctrl+C
    When the operator runs a prompt pinned to hive "alpha"
    Then the answer came from a worker on alpha
    And a prompt pinned to hive "nowhere" is refused with "HIVE_NOT_FOUND" naming "alpha"
    When the operator stops hive "alpha"
    Then nothing of rbee runs on alpha any more
    And the hives list shows alpha offline

  @fixture.hosts
  Scenario: A hive whose rbee-hive is not installed is sent to the install
    When the operator adds hive "alpha" over SSH
    And the operator starts hive "alpha"
    Then rbee-keeper fails with "HIVE_NOT_INSTALLED" saying "rbee-keeper hives install alpha"

  @fixture.hosts
  Scenario: A hive of another version is refused, naming both versions and the upgrade
    Given alpha has an rbee-hive of version "9.9.0" in its virtualenv
    When the operator adds hive "alpha" over SSH
    Then rbee-keeper says "rbee-hive 9.9.0 is installed there"
    When the operator starts hive "alpha"
    Then rbee-keeper fails with "VERSION_MISMATCH" saying "9.9.0" and "rbee-keeper hives install alpha"

  @fixture.hosts
  Scenario: A hive that dies as it starts is reported with the end of its log
    Given alpha has an rbee-hive of this version that fails as it starts, saying "cannot bind 9200"
    When the operator adds hive "alpha" over SSH
    And the operator starts hive "alpha"
    Then rbee-keeper fails with "HIVE_START_FAILED" saying "exited before it registered" and "cannot bind 9200"

  @fixture.hosts
  Scenario: A name is added once, unless replaced; the registry outlives the queen
    When the operator adds hive "alpha" over SSH
    And the operator adds hive "alpha" over SSH again
    Then rbee-keeper fails with "HIVE_ALREADY_EXISTS" saying "--replace"
    When the operator adds hive "alpha" over SSH again, replacing it
    And the queen is restarted on the same state dir
    Then the hives list shows alpha offline
    When the operator removes hive "alpha"
    Then the hives list is empty

  @fixture.hosts
  Scenario: A host where nothing listens for SSH: connection refused, after three attempts
    When the operator adds hive "ghost" over SSH at "alpha:2222"
    Then rbee-keeper fails with "SSH_UNREACHABLE" saying "connection refused" and "port 2222"

  @fixture.hosts
  Scenario: A host cut off the network times out, after three attempts
    When beta's link is cut
    And the operator adds hive "beta" over SSH
    Then rbee-keeper fails with "SSH_UNREACHABLE" saying "timed out" and "3 attempts"

  @fixture.hosts
  Scenario: A hive whose host dropped off the network is listed as unreachable
    When the operator adds hive "alpha" over SSH
    And alpha's link is cut
    And the operator starts hive "alpha"
    Then rbee-keeper fails with "SSH_UNREACHABLE" saying "timed out"
    And the hives list shows alpha unreachable

  @fixture.hosts
  Scenario: A key the host does not accept: which key, and ssh-copy-id
    When the operator adds hive "alpha" over SSH with a key that alpha does not know
    Then rbee-keeper fails with "SSH_AUTH_FAILED" saying "ssh-copy-id" and the key's path

  @fixture.hosts
  Scenario: A key file that others can read is ignored by ssh: chmod 600
    When the operator adds hive "alpha" over SSH with a key file that others can read
    Then rbee-keeper fails with "SSH_AUTH_FAILED" saying "chmod 600" and the key's path

  @fixture.hosts
  Scenario: A host key that changed is refused, saying how to remove the old one
    Given the control host knows another host key for alpha
    When the operator adds hive "alpha" over SSH
    Then rbee-keeper fails with "SSH_HOST_KEY_CHANGED" saying "ssh-keygen" and "-R"

  @fixture.hosts
  Scenario: An unknown host key is accepted only when asked to
    Given the control host does not know alpha's host key
    When the operator adds hive "alpha" over SSH
    Then rbee-keeper fails with "SSH_HOST_KEY_UNKNOWN" saying "--accept-new-host-key"
    When the operator adds hive "alpha" over SSH, accepting a new host key
    Then rbee-keeper says "hive alpha added"
