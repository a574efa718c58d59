package keyval

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// read returns the lines of text and the error each gave (formatted).
func read(text string, repeat ...string) (lines []Line, errs []string) {
	r := NewReader(strings.NewReader(text), "x", "magic", 1, repeat...)
	for {
		l, err := r.Next()
		if err == io.EOF {
			return lines, errs
		}
		if err != nil {
			errs = append(errs, err.Error())
			if Fatal(err) {
				if _, again := r.Next(); again != io.EOF {
					errs = append(errs, "not EOF after a fatal error")
				}
				return lines, errs
			}
			continue
		}
		lines = append(lines, l)
	}
}

func TestReader(t *testing.T) {
	lines, errs := read("# a comment\n\nmagic 1\nkey = v # trailing\n[block]\n a=b \nrep = 1\nrep = 2\n[block]\na = c\n", "rep")
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	want := []Line{{N: 4, Key: "key", Value: "v"}, {N: 5, Section: "block", Header: true}, {N: 6, Section: "block", Key: "a", Value: "b"},
		{N: 7, Section: "block", Key: "rep", Value: "1"}, {N: 8, Section: "block", Key: "rep", Value: "2"},
		{N: 9, Section: "block", Header: true}, {N: 10, Section: "block", Key: "a", Value: "c"}}
	if len(lines) != len(want) {
		t.Fatalf("%+v", lines)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Fatalf("line %d: %+v, want %+v", i, lines[i], want[i])
		}
	}
}

// TestReaderErrors: every mistake names the file and line, and the field
// where there is one; the magic line and the limits end the file, a bad
// line does not.
func TestReaderErrors(t *testing.T) {
	for _, tc := range []struct {
		text string
		want []string
	}{
		{"", []string{"x:0: empty: want \"magic 1\" first"}},
		{"# only a comment\n", []string{"x:1: empty: want"}},
		{"other 1\nk = v\n", []string{"x:1: want \"magic 1\" first"}},
		{"magic 2\n", []string{"x:1: version 2 not supported (this espep reads 1)"}},
		{"magic\n", []string{"x:1: want \"magic 1\" first"}},
		{"magic 1\nno equals\nk = v\n", []string{"x:2: want key = value or [section]"}},
		{"magic 1\nk =\n", []string{"x:2: want key = value"}},
		{"magic 1\n= v\n", []string{"x:2: want key = value"}},
		{"magic 1\nk = 1\nk = 2\n", []string{"x:3: field k: given twice"}},
		{"magic 1\n[a]\nk = 1\n[a]\nk = 2\n", nil}, // a new section, a new block
		{"magic 1\nk = " + strings.Repeat("v", MaxLine) + "\n", []string{"x:2: bufio.Scanner: token too long"}},
	} {
		_, errs := read(tc.text)
		if len(errs) != len(tc.want) {
			t.Errorf("%.30q: %q, want %q", tc.text, errs, tc.want)
			continue
		}
		for i := range errs {
			if !strings.HasPrefix(errs[i], tc.want[i]) {
				t.Errorf("%.30q: %q, want %q", tc.text, errs[i], tc.want[i])
			}
		}
	}
	var e *Error
	_, err := NewReader(strings.NewReader("magic 1\nk = 1\nk = 2\n"), "f", "magic", 1).Next()
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(strings.NewReader("magic 1\nk = 1\nk = 2\n"), "f", "magic", 1)
	r.Next()
	if _, err := r.Next(); !errors.As(err, &e) || e.Line != 3 || e.Field != "k" || Fatal(err) {
		t.Fatalf("%#v", err)
	}
}

// FuzzReader: any text gives lines or errors that name a line of it,
// never a panic, and the reader ends.
func FuzzReader(f *testing.F) {
	for _, s := range []string{"magic 1\nk = v\n[s]\nk = v\n", "magic 1\n[s\nk==v\n=\n#\n", "magic 1\nk = v\nk = w\n",
		"\xef\xbb\xbfmagic 1\n", "magic 1\r\nk = v\r\n", "magic 1\n[]\n[ s ]\n k = = \n", "magic 0\n", "\x00magic 1\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		nl := strings.Count(text, "\n") + 1
		r := NewReader(strings.NewReader(text), "x", "magic", 1, "r")
		for i := 0; ; i++ {
			if i > nl+2 {
				t.Fatal("the reader does not end")
			}
			l, err := r.Next()
			if err == io.EOF {
				return
			}
			var e *Error
			if err != nil && (!errors.As(err, &e) || e.Line < 0 || e.Line > nl) {
				t.Fatalf("error %v names no line of the text", err)
			}
			if err == nil && (l.N < 1 || l.N > nl || !l.Header && (l.Key == "" || l.Value == "")) {
				t.Fatalf("line %+v", l)
			}
		}
	})
}
