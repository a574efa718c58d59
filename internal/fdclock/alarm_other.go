//go:build !linux

package fdclock

import "errors"

func newAlarm() (alarm, error) { return nil, errors.ErrUnsupported }
