package main

import "time"

var testTime = time.Unix(1795700000, 0)
