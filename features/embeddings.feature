@openai @llama @embeddings @fixture.queen
Feature: OpenAI embeddings from workers started for them
  A worker started with --embeddings loads its model for pooled vectors (mean pooling of the default
  model's token states, L2-normalised) and serves nothing else; it registers with the capability
  "embeddings", and the queen sends /v1/embeddings only to such workers and generation never to them.
  The official OpenAI client works unchanged: its default base64 encoding and floats alike.

  Background:
    Given an OpenAI client pointed at the queen

  Scenario: A vector of the model's embedding length, the same for the same input
    Given a real embeddings worker "embedder" is registered
    When the OpenAI client embeds "The cat sat on the mat."
    And the OpenAI client embeds "The cat sat on the mat."
    Then each vector has the model's embedding length and unit norm
    And the two vectors are equal
    And the usage counted the input's tokens

  Scenario: A batch is answered in input order, each vector as if its input came alone
    Given a real embeddings worker "embedder" is registered
    When the OpenAI client embeds these texts in one request
      | text                                      |
      | The cat sat on the mat.                   |
      | Stock prices fell sharply today.          |
      | Bees make honey from the nectar of flowers. |
    And the OpenAI client embeds each of those texts alone
    Then the batch's vectors are indexed in order and equal to the ones embedded alone

  Scenario: Similar sentences are closer than dissimilar ones
    Given a real embeddings worker "embedder" is registered
    When the OpenAI client embeds these texts in one request
      | text                                     |
      | The cat sat on the mat.                  |
      | A cat was sitting on the rug.            |
      | Quarterly revenue grew by eight percent. |
    Then the first two are closer to each other than either is to the third, by cosine

  Scenario: base64 and floats carry the same vector
    Given a real embeddings worker "embedder" is registered
    When the OpenAI client embeds "Bees make honey." as floats and as base64
    Then both encodings decode to the same floats

  Scenario Outline: What the worker cannot honour is refused naming the field
    Given a real embeddings worker "embedder" is registered
    When the OpenAI client embeds <what>
    Then the OpenAI client raised BadRequestError with code "INVALID_REQUEST" and type "invalid_request_error"
    And the refusal names "<name>"

    Examples:
      | what                                   | name       |
      | "bees" shortened to 64 dimensions      | dimensions |
      | a token id the vocabulary lacks        | token id   |

  Scenario: A generation worker beside it keeps serving chat, and neither gets the other's requests
    Given a real embeddings worker "embedder" is registered
    And a real worker "talker" with 1 slot is registered
    When the OpenAI client embeds "Bees make honey."
    And the OpenAI client chats at temperature 0 "Say hello."
    Then the embeddings came from "embedder" and the chat from "talker"
    And the queen lists "embedder" with capability "embeddings" and "talker" with capability "generate"
    And the worker "embedder" itself refuses a generation request, naming its capability

  Scenario: With no embeddings worker the 404 says so, and names the worker that serves the model for generation
    Given a real worker "talker" with 1 slot is registered
    When the OpenAI client asks for embeddings
    Then the OpenAI client raised NotFoundError with code "MODEL_NOT_FOUND" and type "not_found_error"
    And the refusal names "No worker is started for embeddings"
    And the refusal names "talker"

  Scenario: Embeddings for a model no embeddings worker serves: the 404 names the models they do serve
    Given a real embeddings worker "embedder" is registered
    When the OpenAI client embeds "bees" with the model "nomic-embed-text"
    Then the OpenAI client raised NotFoundError with code "MODEL_NOT_FOUND" and type "not_found_error"
    And the refusal lists the model of "embedder" and the embeddings worker "embedder"

  Scenario: A hive spawns an embeddings worker on request, and the queen routes embeddings to it
    Given a hive has spawned an embeddings worker on the default model
    When the OpenAI client embeds "Bees make honey."
    Then the embeddings came from the hive's worker
    And each vector has the model's embedding length and unit norm
