package engine_test

import "flag"

func flagBool(name string) *bool { return flag.Bool(name, false, "run the "+name+" harness") }
