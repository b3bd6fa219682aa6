//! GNU sparse files in layers: the maps that say where a file's data goes.
//!
//! A sparse file is archived as its data segments only, one after the
//! other, with a map of where each belongs in a file of a given size; the
//! rest of the file is holes. GNU tar writes the map in one of four ways
//! (`tar -S`, see its manual, "Storing Sparse Files"), and Go's
//! `archive/tar`, which containerd and docker unpack layers with, reads
//! all four the way this module does:
//!
//! * old GNU: entry type `S`, up to 4 segments in the header, more in
//!   512-byte extension blocks that follow it, the size in `realsize`;
//! * PAX 0.0: `GNU.sparse.offset` and `GNU.sparse.numbytes` records in
//!   turn, with `GNU.sparse.numblocks` and `GNU.sparse.size`;
//! * PAX 0.1: the same as one `GNU.sparse.map` record (`off,len,off,len`);
//! * PAX 1.0 (`GNU.sparse.major=1`, `minor=0`): the map is text at the start
//!   of the entry's data (the count, then offsets and lengths, one number
//!   a line, padded to a block), and the entry's real name and size are in
//!   `GNU.sparse.name` and `GNU.sparse.realsize`.
//!
//! A map must be in order, without overlaps, inside the file's size, and
//! its lengths must add up to exactly the data archived (Go refuses a map
//! that leaves data over or runs out of it); anything else is refused.

/// Where a sparse file's data goes: `segments` of a file of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sparse {
    pub size: u64,
    pub segments: Vec<Segment>,
}

/// One run of data at `offset`, `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// How an entry's PAX records say its map is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// 0.0 or 0.1: the map is in the records.
    InRecords,
    /// 1.0: the map is at the start of the data.
    InData,
}

/// Most bytes of map text an entry may have, in its records (0.0, 0.1) or
/// at the start of its data (1.0): Go's archive/tar allows 1 MiB since
/// CVE-2025-58183 (over 60,000 segments), and it bounds the memory a map
/// takes (a 15 MiB map took 220 MB).
pub(super) const MAX_MAP_TEXT: u64 = 1 << 20;
/// Most extension blocks an old GNU sparse header may have (21 segments
/// each: over 650,000 segments).
pub(super) const MAX_EXTENSIONS: usize = 1 << 15;

/// The `GNU.sparse.*` records of one PAX header.
#[derive(Debug, Default)]
pub(super) struct Records {
    major: Option<Vec<u8>>,
    minor: Option<Vec<u8>>,
    name: Option<Vec<u8>>,
    size: Option<Vec<u8>>,
    realsize: Option<Vec<u8>>,
    numblocks: Option<Vec<u8>>,
    map: Option<Vec<u8>>,
    /// 0.0's offset and length records, in the order given.
    pairs: Vec<Vec<u8>>,
    /// Bytes of map text taken so far (0.0's records, 0.1's map).
    map_text: u64,
}

impl Records {
    /// Takes the record `key=value` if it is a GNU sparse one (true).
    pub fn take(&mut self, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let Some(field) = key.strip_prefix(b"GNU.sparse.") else {
            return Ok(false);
        };
        if matches!(field, b"map" | b"offset" | b"numbytes") {
            self.map_text += value.len() as u64 + 1;
            if self.map_text > MAX_MAP_TEXT {
                return Err("a GNU sparse map over 1 MiB".into());
            }
        }
        let value = value.to_vec();
        match field {
            b"major" => self.major = Some(value),
            b"minor" => self.minor = Some(value),
            b"name" => self.name = Some(value),
            b"size" => self.size = Some(value),
            b"realsize" => self.realsize = Some(value),
            b"numblocks" => self.numblocks = Some(value),
            b"map" => self.map = Some(value),
            b"offset" | b"numbytes" => {
                // 0.0 gives them in turn, offset first.
                let want: &[u8] = if self.pairs.len().is_multiple_of(2) {
                    b"offset"
                } else {
                    b"numbytes"
                };
                if field != want || value.contains(&b',') {
                    return Err("GNU sparse offset and numbytes records out of turn".into());
                }
                self.pairs.push(value);
            }
            // Records of versions to come, or of no version: as Go, left.
            _ => {}
        }
        Ok(true)
    }

    /// How the map is stored; None when the records describe no sparse
    /// file (Go then reads the entry as a plain file, and so does strata).
    pub fn format(&self) -> Result<Option<Format>, String> {
        let major = self.major.as_deref();
        let minor = self.minor.as_deref();
        match (major, minor) {
            (Some(b"0"), Some(b"0" | b"1")) => Ok(Some(Format::InRecords)),
            (Some(b"1"), Some(b"0")) => Ok(Some(Format::InData)),
            // Without a version, a map (an empty one is none, as in Go).
            (None, None)
                if !self.pairs.is_empty() || self.map.as_ref().is_some_and(|m| !m.is_empty()) =>
            {
                Ok(Some(Format::InRecords))
            }
            (None, None) => Ok(None),
            (major, minor) => Err(format!(
                "GNU sparse format {}.{} is not supported (0.0, 0.1 and 1.0 are)",
                show(major),
                show(minor)
            )),
        }
    }

    /// The entry's real name, if the records give one.
    pub fn name(&self) -> Option<&[u8]> {
        self.name.as_deref().filter(|n| !n.is_empty())
    }

    /// The file's size: `GNU.sparse.size` (0.x), else `realsize` (1.0).
    pub fn size(&self) -> Result<Option<u64>, String> {
        match self.size.as_deref().or(self.realsize.as_deref()) {
            None => Ok(None),
            Some(v) => decimal(v)
                .map(Some)
                .ok_or_else(|| format!("a bad GNU sparse size `{}`", show(Some(v)))),
        }
    }

    /// The map of a 0.0 or 0.1 entry.
    pub fn segments(&self) -> Result<Vec<Segment>, String> {
        let joined;
        let numbers: Vec<&[u8]> = if !self.pairs.is_empty() {
            // 0.0's records win over a map record, as in Go.
            self.pairs.iter().map(Vec::as_slice).collect()
        } else {
            joined = self.map.clone().unwrap_or_default();
            if joined.is_empty() {
                Vec::new()
            } else {
                joined.split(|b| *b == b',').collect()
            }
        };
        let count = self
            .numblocks
            .as_deref()
            .and_then(decimal)
            .ok_or("a GNU sparse map without a valid block count")?;
        if count.checked_mul(2) != Some(numbers.len() as u64) {
            return Err(format!(
                "a GNU sparse map of {} numbers for {count} segments",
                numbers.len()
            ));
        }
        pairs(&numbers)
    }
}

/// What the start of a PAX 1.0 entry's data holds so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MapText {
    /// Not the whole map yet: it takes this many lines in all.
    Lines(u64),
    /// The map, and the bytes of text it takes (whole blocks).
    Map(Vec<Segment>, u64),
}

/// Reads a PAX 1.0 map from `text`, the entry's first blocks: the count
/// of segments, then an offset and a length for each, one number a line.
pub(super) fn map_in_data(text: &[u8]) -> Result<MapText, String> {
    let bad_count = || "a GNU sparse map with a bad segment count".to_string();
    let mut lines = text.split(|b| *b == b'\n');
    let mut used = 0usize;
    let mut line = |used: &mut usize| {
        // The last piece has no newline after it: not a whole line.
        let l = lines.next()?;
        if *used + l.len() >= text.len() {
            return None;
        }
        *used += l.len() + 1;
        Some(l)
    };
    let Some(first) = line(&mut used) else {
        return Ok(MapText::Lines(1));
    };
    let count = decimal(first).ok_or_else(bad_count)?;
    let all = count
        .checked_mul(2)
        .and_then(|n| n.checked_add(1))
        .ok_or_else(bad_count)?;
    let mut segments = Vec::new();
    for _ in 0..count {
        let (Some(offset), Some(len)) = (line(&mut used), line(&mut used)) else {
            return Ok(MapText::Lines(all));
        };
        segments.extend(pairs(&[offset, len])?);
    }
    // The map ends at the end of the block that holds its last newline.
    let blocks = used.div_ceil(super::BLOCK) * super::BLOCK;
    Ok(MapText::Map(segments, blocks as u64))
}

/// Reads an old GNU header's (or extension block's) segments from `area`:
/// `count` fields of 24 bytes (offset, length), up to the first whose
/// offset starts with a NUL (as GNU tar, BSD tar and Go stop).
pub(super) fn old_gnu_segments(area: &[u8], count: usize) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    for field in area.chunks_exact(24).take(count) {
        if field[0] == 0 {
            break;
        }
        let (offset, len) = field.split_at(12);
        match (number(offset), number(len)) {
            (Some(offset), Some(len)) => out.push(Segment { offset, len }),
            _ => return Err("a GNU sparse header with a field that is not a number".into()),
        }
    }
    Ok(out)
}

/// A numeric header field (octal text, or base-256 with the high bit set),
/// as in [`super::reader::header_number`]: only NULs is 0; negative is
/// refused.
pub(super) fn number(field: &[u8]) -> Option<u64> {
    if field.iter().all(|b| *b == 0) {
        return Some(0);
    }
    if field[0] & 0x80 != 0 {
        if field[0] & 0x40 != 0 {
            return None;
        }
        let mut v = u64::from(field[0] & 0x3f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    // Octal digits, with spaces before and spaces or NULs after (as GNU tar
    // and Go read them: no sign, no other blanks).
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?.trim_matches(' ');
    if text.is_empty() || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u64::from_str_radix(text, 8).ok()
}

/// Checks `segments` against a file of `size` bytes with `data` bytes
/// archived: in order, no overlap, inside the file, and all the data used.
pub(super) fn check(segments: &[Segment], size: u64, data: u64) -> Result<(), String> {
    if size > i64::MAX as u64 {
        return Err(format!("a sparse file of {size} bytes"));
    }
    let mut end = 0u64;
    let mut total = 0u64;
    for s in segments {
        let stop = s
            .offset
            .checked_add(s.len)
            .filter(|stop| *stop <= size)
            .ok_or_else(|| {
                format!(
                    "its sparse map puts {} bytes at offset {} of a {size}-byte file",
                    s.len, s.offset
                )
            })?;
        if s.offset < end {
            return Err(format!(
                "its sparse map is out of order or overlaps at offset {}",
                s.offset
            ));
        }
        end = stop;
        total += s.len;
    }
    if total != data {
        return Err(format!(
            "its sparse map places {total} bytes but the archive holds {data}"
        ));
    }
    Ok(())
}

/// Offsets and lengths from decimal numbers taken two by two.
fn pairs(numbers: &[&[u8]]) -> Result<Vec<Segment>, String> {
    numbers
        .chunks_exact(2)
        .map(|p| match (decimal(p[0]), decimal(p[1])) {
            (Some(offset), Some(len)) => Ok(Segment { offset, len }),
            _ => Err(format!(
                "a GNU sparse map with a bad number in `{},{}`",
                show(Some(p[0])),
                show(Some(p[1]))
            )),
        })
        .collect()
}

fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn show(v: Option<&[u8]>) -> String {
    match v {
        None => "?".into(),
        Some(v) => super::show(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    fn records(pairs: &[(&str, &str)]) -> Result<Records, String> {
        let mut r = Records::default();
        for (k, v) in pairs {
            assert!(r.take(k.as_bytes(), v.as_bytes())?, "{k}");
        }
        Ok(r)
    }

    #[test]
    fn the_pax_formats() {
        let v00 = records(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "10"),
            ("GNU.sparse.numbytes", "5"),
            ("GNU.sparse.offset", "100"),
            ("GNU.sparse.numbytes", "0"),
        ])
        .unwrap();
        assert_eq!(v00.format(), Ok(Some(Format::InRecords)));
        assert_eq!(v00.size(), Ok(Some(100)));
        assert_eq!(v00.segments().unwrap(), [seg(10, 5), seg(100, 0)]);

        let v01 = records(&[
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.name", "real"),
            ("GNU.sparse.size", "9"),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "4,5"),
        ])
        .unwrap();
        assert_eq!(v01.format(), Ok(Some(Format::InRecords)));
        assert_eq!(v01.name(), Some(&b"real"[..]));
        assert_eq!(v01.segments().unwrap(), [seg(4, 5)]);

        let v10 = records(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.realsize", "7"),
        ])
        .unwrap();
        assert_eq!(v10.format(), Ok(Some(Format::InData)));
        assert_eq!(v10.size(), Ok(Some(7)));

        // No version and no map (or an empty one): not a sparse file (as
        // Go reads it).
        let none = records(&[("GNU.sparse.name", "x")]).unwrap();
        assert_eq!(none.format(), Ok(None));
        let empty = records(&[("GNU.sparse.map", "")]).unwrap();
        assert_eq!(empty.format(), Ok(None));
        // A version strata does not know.
        let v2 = records(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]).unwrap();
        assert!(v2.format().unwrap_err().contains("2.0"));
    }

    #[test]
    fn bad_pax_maps_are_refused() {
        // Out of turn, a comma in a 0.0 number.
        let mut r = Records::default();
        assert!(r.take(b"GNU.sparse.numbytes", b"1").is_err());
        let mut r = Records::default();
        assert!(r.take(b"GNU.sparse.offset", b"1,2").is_err());
        // A count that does not match, bad numbers, a missing count.
        for map in [
            &[("GNU.sparse.numblocks", "2"), ("GNU.sparse.map", "1,2")][..],
            &[("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "1,x")],
            &[("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "1,-2")],
            &[("GNU.sparse.map", "1,2")],
            &[
                ("GNU.sparse.numblocks", "99999999999999999999"),
                ("GNU.sparse.map", "1,2"),
            ],
        ] {
            let r = records(map).unwrap();
            assert!(r.segments().is_err(), "{map:?}");
        }
        let r = records(&[("GNU.sparse.size", "-1"), ("GNU.sparse.map", "")]).unwrap();
        assert!(r.size().is_err());
        // Over 1 MiB of map, in one record or in many.
        let long = "0,0,".repeat(300_000);
        let mut r = Records::default();
        assert!(
            r.take(b"GNU.sparse.map", long.as_bytes())
                .unwrap_err()
                .contains("1 MiB")
        );
        let mut r = Records::default();
        let mut refused = None;
        for i in 0..300_000 {
            let key: &[u8] = if i % 2 == 0 {
                b"GNU.sparse.offset"
            } else {
                b"GNU.sparse.numbytes"
            };
            if let Err(e) = r.take(key, b"1234") {
                refused = Some(e);
                break;
            }
        }
        assert!(refused.unwrap().contains("1 MiB"));
    }

    #[test]
    fn the_map_at_the_start_of_the_data() {
        let mut block = b"2\n0\n3\n10\n4\n".to_vec();
        // Whole lines are needed: a count alone, or a half number, waits.
        assert_eq!(map_in_data(b"2\n0\n3\n1"), Ok(MapText::Lines(5)));
        assert_eq!(map_in_data(b"2"), Ok(MapText::Lines(1)));
        block.resize(512, 0);
        block.extend_from_slice(b"data after the map");
        assert_eq!(
            map_in_data(&block),
            Ok(MapText::Map(vec![seg(0, 3), seg(10, 4)], 512))
        );
        // A map longer than a block ends at the end of its last block.
        let mut long = b"100\n".to_vec();
        for i in 0..100 {
            long.extend_from_slice(format!("{}\n1\n", i * 10).as_bytes());
        }
        assert!(long.len() > 512);
        long.resize(1024, 0);
        let MapText::Map(segments, used) = map_in_data(&long).unwrap() else {
            panic!("no map");
        };
        assert_eq!((segments.len(), used), (100, 1024));
        assert!(map_in_data(b"x\n").is_err());
        assert!(map_in_data(b"1\n2\ny\n").is_err());
        assert!(map_in_data(b"99999999999999999999\n").is_err());
    }

    #[test]
    fn old_gnu_fields() {
        let mut area = [0u8; 24 * 4];
        area[..12].copy_from_slice(b"00000000012\0");
        area[12..24].copy_from_slice(b"00000000005\0");
        // Base-256 offset.
        area[24] = 0x80;
        area[24 + 11] = 0x40;
        area[36..48].copy_from_slice(b"00000000001\0");
        // The third starts with a NUL: the list ends there.
        area[60..72].copy_from_slice(b"00000000001\0");
        assert_eq!(old_gnu_segments(&area, 4), Ok(vec![seg(10, 5), seg(64, 1)]));
        area[1] = b'9';
        assert!(old_gnu_segments(&area, 4).is_err());
        assert_eq!(number(b"   17\0 \0"), Some(15));
        assert_eq!(number(b"  17  "), Some(15));
        // No sign, no tabs, no digits 8 and 9 (as GNU tar and Go).
        assert_eq!(number(b"+17"), None);
        assert_eq!(number(b"\t17"), None);
        assert_eq!(number(b"18"), None);
        assert_eq!(number(b"\0\0\0"), Some(0));
        assert_eq!(number(b"    "), None);
        assert_eq!(number(&[0xff; 12]), None);
    }

    #[test]
    fn maps_are_checked_against_the_file_and_the_data() {
        assert_eq!(check(&[seg(0, 3), seg(10, 4), seg(20, 0)], 20, 7), Ok(()));
        assert_eq!(check(&[], 20, 0), Ok(()));
        for (segments, size, data, needle) in [
            (vec![seg(0, 3), seg(2, 4)], 20, 7, "overlaps"),
            (vec![seg(10, 3), seg(0, 4)], 20, 7, "out of order"),
            (vec![seg(18, 3)], 20, 3, "offset 18"),
            (vec![seg(u64::MAX, 3)], 20, 3, "offset"),
            (vec![seg(0, 3)], 20, 4, "archive holds 4"),
            (vec![seg(0, 3)], 20, 2, "places 3"),
            (vec![], u64::MAX, 0, "bytes"),
        ] {
            let err = check(&segments, size, data).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }
}
