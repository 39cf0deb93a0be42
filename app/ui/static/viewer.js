// Times in the viewer's own zone. The server writes UTC into each <time> (its text, and its title
// for hover); this rewrites the text in the browser's zone and leaves the UTC title. Without
// JavaScript the page stays in UTC, labelled so.
"use strict";

const localTime = new Intl.DateTimeFormat("en-US", {
  year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3,
  hourCycle: "h23", timeZoneName: "short",
});

// 2026-11-25 15:03:07.123 GMT+1: the page's own order of fields, in the browser's zone.
function localText(moment) {
  const part = Object.fromEntries(localTime.formatToParts(moment).map((p) => [p.type, p.value]));
  return `${part.year}-${part.month}-${part.day} ${part.hour}:${part.minute}:${part.second}` +
    `.${part.fractionalSecond} ${part.timeZoneName}`;
}

function localizeTimes(root) {
  for (const element of root.querySelectorAll("time[datetime]")) {
    const moment = new Date(element.dateTime);
    if (!Number.isNaN(moment.getTime())) {
      element.textContent = localText(moment);
      element.classList.add("local");
    }
  }
}

window.datastorageViewer = { localizeTimes };
document.addEventListener("DOMContentLoaded", () => localizeTimes(document));
