// Package keyval reads espep's key = value files — native SA files,
// gateway and host configurations — with one grammar, one set of limits
// and one error form, FILE:LINE: field KEY: WHAT. The formats differ only
// in their magic line, their sections and their keys, which their own
// packages give meaning to; this package knows none of them.
//
// The grammar:
//
//	MAGIC VERSION        the first line that is not blank or a comment
//	[section]            starts a section (a block: an [sa], a [policy])
//	key = value          a setting; neither may be empty
//	# comment            from # to the end of the line, anywhere
//
// Limits, for files a hostile hand may have written: MaxLine bytes per
// line, MaxLines lines; a key given twice in one section is an error
// unless the format says it repeats.
package keyval

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// MaxLine bounds a line, MaxLines a file.
const (
	MaxLine  = 4096
	MaxLines = 1 << 20
)

// Error is a mistake at a line and, where known, a field.
type Error struct {
	File  string
	Line  int
	Field string
	Err   error
	fatal bool // the file ends here (Fatal)
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s:%d: field %s: %v", e.File, e.Line, e.Field, e.Err)
	}
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Line is one setting or section header.
type Line struct {
	N       int    // line number, from 1
	Section string // the section the setting is in ("" before the first); for a header, the new section
	Header  bool   // a [section] line
	Key     string
	Value   string
}

// Reader reads a file line by line.
type Reader struct {
	sc      *bufio.Scanner
	name    string
	magic   string
	version int
	repeat  map[string]bool
	n       int
	head    bool
	done    bool
	section string
	seen    map[string]bool
}

// NewReader reads r, whose first line must be "magic version"; name is
// the file's name in errors. Keys in repeat may be given more than once
// in a section.
func NewReader(r io.Reader, name, magic string, version int, repeat ...string) *Reader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 512), MaxLine)
	rd := &Reader{sc: sc, name: name, magic: magic, version: version, repeat: map[string]bool{}, seen: map[string]bool{}}
	for _, k := range repeat {
		rd.repeat[k] = true
	}
	return rd
}

// Name is the file's name, as errors give it.
func (r *Reader) Name() string { return r.name }

// Errorf makes an error at line l, field field ("" for none).
func (r *Reader) Errorf(l Line, field, format string, args ...any) *Error {
	return &Error{File: r.name, Line: l.N, Field: field, Err: fmt.Errorf(format, args...)}
}

// Wrap makes err an error at line l, field field.
func (r *Reader) Wrap(l Line, field string, err error) *Error {
	return &Error{File: r.name, Line: l.N, Field: field, Err: err}
}

// Fatal reports whether err ends the file: after it Next returns io.EOF.
// Other errors are one line's mistake, and Next goes on to the next line.
func Fatal(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.fatal
}

// Next returns the next setting or section header; io.EOF after the last.
// A line's mistake (no "=", an empty key or value, a key given twice) is
// an *Error for that line; a bad magic line, a line too long, too many
// lines or a read error end the file (Fatal).
func (r *Reader) Next() (Line, error) {
	for !r.done && r.sc.Scan() {
		r.n++
		if r.n > MaxLines {
			return r.end(fmt.Errorf("more than %d lines", MaxLines))
		}
		text := r.sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		l := Line{N: r.n, Section: r.section}
		if !r.head {
			if err := r.header(text); err != nil {
				return r.end(err)
			}
			r.head = true
			continue
		}
		if strings.HasPrefix(text, "[") && strings.HasSuffix(text, "]") {
			r.section = strings.TrimSpace(text[1 : len(text)-1])
			clear(r.seen)
			l.Section, l.Header = r.section, true
			return l, nil
		}
		k, v, ok := strings.Cut(text, "=")
		l.Key, l.Value = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok || l.Key == "" || l.Value == "":
			return l, r.Errorf(l, "", "want key = value or [section], got %q", trunc(text))
		case r.seen[l.Key] && !r.repeat[l.Key]:
			return l, r.Errorf(l, l.Key, "given twice")
		}
		r.seen[l.Key] = true
		return l, nil
	}
	if r.done {
		return Line{}, io.EOF
	}
	if err := r.sc.Err(); err != nil {
		r.n++
		return r.end(err)
	}
	r.done = true
	if !r.head {
		return Line{N: r.n}, &Error{File: r.name, Line: r.n, Err: fmt.Errorf("empty: want %q first", r.first()), fatal: true}
	}
	return Line{}, io.EOF
}

func (r *Reader) first() string { return r.magic + " " + strconv.Itoa(r.version) }

func (r *Reader) header(text string) error {
	f := strings.Fields(text)
	if len(f) != 2 || f[0] != r.magic {
		return fmt.Errorf("want %q first", r.first())
	}
	if f[1] != strconv.Itoa(r.version) {
		return fmt.Errorf("version %s not supported (this espep reads %d)", f[1], r.version)
	}
	return nil
}

func (r *Reader) end(err error) (Line, error) {
	r.done = true
	return Line{N: r.n}, &Error{File: r.name, Line: r.n, Err: err, fatal: true}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
