import pytest

from hubbub.topics import TopicError, is_literal, validate_pattern, validate_topic


@pytest.mark.parametrize("topic", [
    "a", "orders.42", "user.123.inbox", "$sys.connections", "a" * 255,
    "ünïcødé.topic", "x-y_z:1@2",
])
def test_valid_topics(topic):
    assert validate_topic(topic) == topic
    assert validate_pattern(topic) == topic


@pytest.mark.parametrize("topic, fragment", [
    ("", "topic is empty"),
    ("a" * 256, "256 bytes, over the 255-byte limit"),
    ("é" * 128, "256 bytes"),
    (".a", "empty segment at position 1"),
    ("a.", "empty segment at position 2"),
    ("a..b", "empty segment at position 2"),
    ("a b", "contains whitespace"),
    ("a.\tb", "contains whitespace"),
    ("orders.*", "wildcards are only for subscription patterns"),
    ("orders.>", "wildcards are only for subscription patterns"),
    ("ord*ers", "contains '*'"),
    ("\ud800", "not valid UTF-8"),
])
def test_invalid_topics_name_the_problem(topic, fragment):
    with pytest.raises(TopicError) as error:
        validate_topic(topic)
    assert fragment in str(error.value)


def test_non_string_topic():
    with pytest.raises(TopicError, match="must be a string, not int"):
        validate_topic(42)


@pytest.mark.parametrize("pattern", ["*", ">", "orders.*", "orders.>", "*.*.x", "a.*.>", "$sys.>"])
def test_valid_patterns(pattern):
    assert validate_pattern(pattern) == pattern
    assert not is_literal(pattern)


@pytest.mark.parametrize("pattern, fragment", [
    (">.a", "'>' must be the last segment"),
    ("a.>.b", "'>' must be the last segment"),
    ("a*", "mixes '*' with other characters"),
    ("a.b>", "mixes '>' with other characters"),
    ("a..*", "empty segment at position 2"),
    ("", "pattern is empty"),
])
def test_invalid_patterns_name_the_problem(pattern, fragment):
    with pytest.raises(TopicError) as error:
        validate_pattern(pattern)
    assert fragment in str(error.value)


def test_topic_error_is_a_value_error():
    assert issubclass(TopicError, ValueError)
