// The user's speed unit: the API speaks m/s everywhere; the page shows and takes speeds in the
// unit the user picked (kept in localStorage), by default the one of the browser's locale
// (mph for the US and the UK, km/h elsewhere).

const KEY = 'gps.speedUnit';

/** Each unit: its label and how many of it make one m/s. */
export const SPEED_UNITS = {
  kmh: { label: 'km/h', perMps: 3.6 },
  mph: { label: 'mph', perMps: 3600 / 1609.344 },
  kn: { label: 'kn', perMps: 3600 / 1852 },
  mps: { label: 'm/s', perMps: 1 },
};

function localeDefault() {
  const lang = (navigator.language || '').toLowerCase();
  return lang === 'en-us' || lang === 'en-gb' ? 'mph' : 'kmh';
}

export function speedUnit() {
  const stored = localStorage.getItem(KEY);
  return SPEED_UNITS[stored] ? stored : localeDefault();
}

export function setSpeedUnit(unit) {
  if (SPEED_UNITS[unit]) localStorage.setItem(KEY, unit);
}

/** "92 km/h" for a speed in m/s (`—` when unknown). */
export function formatSpeed(mps) {
  if (!Number.isFinite(mps)) return '—';
  const unit = SPEED_UNITS[speedUnit()];
  return `${(mps * unit.perMps).toFixed(mps * unit.perMps < 10 ? 1 : 0)} ${unit.label}`;
}

/** A value typed in the user's unit, in m/s. */
export function toMps(value) {
  return value / SPEED_UNITS[speedUnit()].perMps;
}

/** A speed in m/s in the user's unit (rounded to 0.1). */
export function fromMps(mps) {
  return Math.round(mps * SPEED_UNITS[speedUnit()].perMps * 10) / 10;
}
