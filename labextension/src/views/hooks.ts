import { ISignal } from '@lumino/signaling';
import { useEffect, useReducer, useState } from 'react';

/** Render again whenever `signal` emits. */
export function useSignal(signal: ISignal<unknown, unknown>): void {
  const [, bump] = useReducer((n: number) => n + 1, 0);
  useEffect(() => {
    const slot = () => bump();
    signal.connect(slot);
    return () => {
      signal.disconnect(slot);
    };
  }, [signal]);
}

/** The time (ms), renewed every second while `ticking`: for clocks that count. */
export function useNow(ticking: boolean): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!ticking) {
      return;
    }
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, [ticking]);
  return ticking ? now : Date.now();
}
