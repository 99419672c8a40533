//! Reading one line of hclog's JSON output (`{"@level":"info","@message":"…","key":1}`), the
//! log format of go-plugin plugins, without a JSON library: a flat object whose string values
//! are unescaped and whose other values (numbers, `true`, nested objects …) are kept as their
//! JSON text.

/// The object's fields in order, or `None` if the line is not one JSON object.
pub(super) fn parse(line: &str) -> Option<Vec<(String, String)>> {
    let mut reader = Reader { bytes: line.trim().as_bytes(), at: 0 };
    reader.expect(b'{')?;
    let mut fields = Vec::new();
    reader.skip_space();
    if reader.peek() == Some(b'}') {
        reader.at += 1;
    } else {
        loop {
            reader.skip_space();
            let key = reader.string()?;
            reader.skip_space();
            reader.expect(b':')?;
            reader.skip_space();
            let value =
                if reader.peek() == Some(b'"') { reader.string()? } else { reader.raw()? };
            fields.push((key, value));
            reader.skip_space();
            match reader.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    reader.skip_space();
    (reader.at == reader.bytes.len()).then_some(fields)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    /// A JSON string, unescaped.
    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let unescaped = match self.next()? {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hex = self.bytes.get(self.at..self.at + 4)?;
                            self.at += 4;
                            let code =
                                u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
                        }
                        other => char::from(other),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(unescaped.encode_utf8(&mut buf).as_bytes());
                }
                byte => out.push(byte),
            }
        }
    }

    /// Any other JSON value, as its text: up to the `,` or `}` that ends it at depth 0.
    fn raw(&mut self) -> Option<String> {
        let start = self.at;
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b'}' if depth == 0 => break,
                _ => {}
            }
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hclog_line_gives_its_fields_in_order() {
        let line = r#"{"@level":"info","@message":"initialized \"x\"\u00e9","@timestamp":"2026-12-01T09:12:55.580000Z","keys":0,"nested":{"a":[1,"}"]},"ok":true}"#;
        let fields = parse(line).unwrap();
        let pairs: Vec<(&str, &str)> =
            fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("@level", "info"),
                ("@message", "initialized \"x\"é"),
                ("@timestamp", "2026-12-01T09:12:55.580000Z"),
                ("keys", "0"),
                ("nested", r#"{"a":[1,"}"]}"#),
                ("ok", "true"),
            ]
        );
        assert_eq!(parse("{}"), Some(Vec::new()));
    }

    #[test]
    fn anything_else_is_not_an_object() {
        for line in ["", "{", r#"{"a"}"#, r#"{"a":1"#, r#"{"a":1} trailing"#, "[1]", r#"{"a":}"#] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn fuzz_lines_never_panic(line in "\\PC{0,120}") {
            let _ = parse(&line);
        }

        #[test]
        fn fuzz_json_shaped_lines_never_panic(line in r#"\{("[a-z@\\"]{0,6}":("[^"]{0,6}"|[0-9.e-]{0,4}|\{[^{}]{0,8}\}|true),?){0,5}\}"#) {
            let _ = parse(&line);
        }
    }
}
