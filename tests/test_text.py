"""Token bytes to client text: UTF-8 across tokens and stop strings across tokens."""

from p2pai.backends.text import TextAssembler


def feed(assembler: TextAssembler, pieces: list[bytes]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        result = assembler.push(piece)
        out.append(result.text)
        if result.stopped:
            return "".join(out), True
    result = assembler.finish()
    return "".join(out) + result.text, result.stopped


def test_plain_text_passes_through_token_by_token() -> None:
    assembler = TextAssembler()
    assert assembler.push(b"Hello").text == "Hello"
    assert assembler.push(b" world").text == " world"
    assert assembler.finish().text == ""


def test_multibyte_character_split_over_tokens_is_held_until_complete() -> None:
    euro = "€".encode()
    assembler = TextAssembler()
    assert assembler.push(euro[:1]).text == ""
    assert assembler.push(euro[1:2]).text == ""
    assert assembler.push(euro[2:] + b"!").text == "€!"


def test_stop_string_inside_one_token_cuts_before_it() -> None:
    assert feed(TextAssembler(("STOP",)), [b"abc", b"deSTOPfg", b"never"]) == ("abcde", True)


def test_stop_string_spanning_tokens_is_never_partly_sent() -> None:
    assembler = TextAssembler(("</end>",))
    sent = [assembler.push(p).text for p in (b"hi </", b"en")]
    assert sent == ["hi ", ""]
    result = assembler.push(b"d> tail")
    assert (result.text, result.stopped) == ("", True)


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    assembler = TextAssembler(("###",))
    assert assembler.push(b"a#").text == "a"
    assert assembler.push(b"#b").text == "##b"


def test_held_prefix_is_flushed_at_the_end() -> None:
    assert feed(TextAssembler(("###",)), [b"a", b"##"]) == ("a##", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed(TextAssembler(("yz", "b")), [b"abcxyz"]) == ("a", True)


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert feed(TextAssembler(), [b"\xff", b"ok"]) == ("\ufffdok", False)
