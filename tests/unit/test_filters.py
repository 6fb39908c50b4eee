import pytest

from hubbub.filters import FilterError, compile_filter, validate_tags


def test_query_and_object_forms_compile_to_the_same_interned_filter():
    a = compile_filter("region:eu,level:high|critical")
    b = compile_filter({"level": ["critical", "high"], "region": "eu"})
    assert a is b
    assert a.items == (("level", frozenset({"high", "critical"})), ("region", frozenset({"eu"})))


@pytest.mark.parametrize("spec", [None, "", {}])
def test_empty_filter_is_no_filter(spec):
    assert compile_filter(spec) is None


def test_matching_semantics():
    f = compile_filter({"region": "eu", "level": ["high", "critical"]})
    assert f.matches({"region": "eu", "level": "high"})
    assert f.matches({"region": "eu", "level": "critical", "extra": "x"})
    assert not f.matches({"region": "us", "level": "high"})
    assert not f.matches({"region": "eu"})  # missing tag does not match
    assert not f.matches({})
    assert not f.matches(None)


@pytest.mark.parametrize("spec, fragment", [
    ("region", "is not key:value"),
    ("region:", "empty value"),
    ("region:eu|", "empty value"),
    (":eu", "non-empty string"),
    ("a:1,a:2", "appears twice"),
    ({"region": 1}, "must be a string or a list of strings"),
    ({"region": []}, "empty list"),
    ({"region": ["eu", 2]}, "is not a string"),
    ({"": "x"}, "non-empty string"),
    (["region"], "must be an object or a query string"),
    ({f"k{i}": "v" for i in range(40)}, "over the limit"),
])
def test_malformed_filters(spec, fragment):
    with pytest.raises(FilterError) as error:
        compile_filter(spec)
    assert fragment in str(error.value)


def test_tags_validation():
    assert validate_tags(None) is None
    assert validate_tags({}) is None
    assert validate_tags({"a": "b"}) == {"a": "b"}
    with pytest.raises(FilterError, match="must map a string to a string"):
        validate_tags({"a": 1})
    with pytest.raises(FilterError, match="must be an object"):
        validate_tags(["a"])
