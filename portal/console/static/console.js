// The console's only script: every element with data-live="/path" has its HTML re-fetched
// from that path every 2 s and swapped in (running transfers' progress). Without it the
// page is whole; it just does not update.
"use strict";

const LIVE_EVERY_MS = 2000;

async function refresh(element) {
  if (document.hidden) return true; // a tab nobody looks at asks for nothing
  try {
    const answer = await fetch(element.dataset.live, { credentials: "same-origin" });
    if (!answer.ok || answer.redirected) return false; // gone, or the session expired
    element.innerHTML = await answer.text();
    element.dataset.updated = new Date().toISOString();
  } catch (error) {
    // The portal is unreachable for a moment: try again on the next turn.
  }
  return true;
}

function follow(element) {
  const turn = async () => {
    if (await refresh(element)) setTimeout(turn, LIVE_EVERY_MS);
  };
  setTimeout(turn, LIVE_EVERY_MS);
}

document.querySelectorAll("[data-live]").forEach(follow);
